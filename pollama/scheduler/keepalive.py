"""Request-side inputs of the scheduler: ``keep_alive`` and the load-time options.

Both are parsed here, before a request reaches the scheduler, so a bad value is a
400 (``InvalidKeepAlive``, ``InvalidOption``). Ollama answers a wrongly typed option
with a 500; it is the client's mistake, so pollama says 400.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pollama.errors import InvalidKeepAlive
from pollama.options.load import LoadOptions
from pollama.options.parameters import OptionKind, names, validate_options
from pollama.settings import FOREVER, Settings
from pollama.units import parse_duration

"""The options that decide whether a loaded runner can serve a request."""


def parse_keep_alive(value: object) -> float | None:
    """``keep_alive`` as Ollama reads it: seconds, ``inf`` for forever, None when omitted.

    A number is seconds (fractions allowed); a string is a Go duration
    (``"10m"``, ``"1h30m"``, ``"-1m"``, ``"0"``); anything negative means
    forever. A bare numeric string such as ``"300"`` is not a duration and
    raises InvalidKeepAlive, as Ollama answers it with a 400.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidKeepAlive(f"invalid keep_alive {value!r}: expected a number or a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        if not value.strip():
            raise InvalidKeepAlive('invalid keep_alive "": expected a duration such as "5m"')
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise InvalidKeepAlive(
                f"invalid keep_alive {value!r}: expected a number of seconds or a duration "
                'such as "5m", "1h" or "-1m"'
            ) from None
    else:
        raise InvalidKeepAlive(f"invalid keep_alive {value!r}: expected a number or a duration")
    if math.isnan(seconds):
        raise InvalidKeepAlive("invalid keep_alive: not a number")
    return normalize_keep_alive(seconds)


def normalize_keep_alive(seconds: float) -> float:
    """Negative (and infinite) keep-alives mean forever."""
    return FOREVER if seconds < 0 else seconds


def load_options(options: Mapping[str, Any], settings: Settings) -> LoadOptions:
    """The load-time part of merged options (Modelfile PARAMETERs ← request ``options``),
    with the environment's settings; InvalidOption (a 400) for a wrongly typed one."""
    asked = {name: options.get(name) for name in names(OptionKind.LOAD)}
    checked = validate_options(asked)  # None means "not given": dropped
    return LoadOptions(
        num_ctx=checked.pop("num_ctx", settings.context_length),
        **checked,
        parallel=max(1, settings.num_parallel),
        flash_attention=settings.flash_attention,
        kv_cache_type=settings.kv_cache_type,
        draft_max=settings.draft_max,
    )
