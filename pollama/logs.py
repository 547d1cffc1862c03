"""How every pollama process logs: one format, DEBUG under ``OLLAMA_DEBUG``."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(debug: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format=FORMAT)
