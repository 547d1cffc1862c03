"""Request-side inputs of the scheduler: ``keep_alive`` and the load-time options.

Both are parsed here, before a request reaches the scheduler, so a bad value is
a ``ValueError`` the API layer turns into an error response (400 for
``keep_alive``; a wrongly typed option is a 500, as in Ollama).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from pollama.options.load import LoadOptions
from pollama.settings import FOREVER, Settings
from pollama.units import parse_duration

LOAD_TIME_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread")
"""The options that decide whether a loaded runner can serve a request."""


def parse_keep_alive(value: object) -> float | None:
    """``keep_alive`` as Ollama reads it: seconds, ``inf`` for forever, None when omitted.

    A number is seconds (fractions allowed); a string is a Go duration
    (``"10m"``, ``"1h30m"``, ``"-1m"``, ``"0"``); anything negative means
    forever. A bare numeric string such as ``"300"`` is not a duration and
    raises ValueError, as Ollama answers it with a 400.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid keep_alive {value!r}: expected a number or a duration")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        if not value.strip():
            raise ValueError('invalid keep_alive "": expected a duration such as "5m"')
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise ValueError(
                f"invalid keep_alive {value!r}: expected a number of seconds or a duration "
                'such as "5m", "1h" or "-1m"'
            ) from None
    else:
        raise ValueError(f"invalid keep_alive {value!r}: expected a number or a duration")
    if math.isnan(seconds):
        raise ValueError("invalid keep_alive: not a number")
    return normalize_keep_alive(seconds)


def normalize_keep_alive(seconds: float) -> float:
    """Negative (and infinite) keep-alives mean forever."""
    return FOREVER if seconds < 0 else seconds


def load_options(options: Mapping[str, Any], settings: Settings) -> LoadOptions:
    """The load-time part of merged options (Modelfile PARAMETERs ← request
    ``options``), with the environment's settings; None means "not given"."""
    return LoadOptions(
        num_ctx=_int(options, "num_ctx", settings.context_length),
        num_batch=_int(options, "num_batch", LoadOptions.num_batch),
        num_gpu=_int(options, "num_gpu", LoadOptions.num_gpu),
        main_gpu=_int(options, "main_gpu", LoadOptions.main_gpu),
        use_mmap=_bool(options, "use_mmap"),
        num_thread=_int(options, "num_thread", LoadOptions.num_thread),
        parallel=max(1, settings.num_parallel),
        flash_attention=settings.flash_attention,
        kv_cache_type=settings.kv_cache_type,
    )


def _int(options: Mapping[str, Any], name: str, default: int) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        raise ValueError(f'option "{name}" must be of type integer')
    return int(raw)


def _bool(options: Mapping[str, Any], name: str) -> bool | None:
    raw = options.get(name)
    if raw is None or isinstance(raw, bool):
        return raw
    raise ValueError(f'option "{name}" must be of type boolean')
