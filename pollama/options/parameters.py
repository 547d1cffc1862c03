"""Ollama's model options: their types, Modelfile PARAMETER parsing, request validation.

Two ways in, with different strictness, as in Ollama:

- ``PARAMETER key value`` in a Modelfile is text: an unknown key or a value that
  does not parse is an error (the Modelfile is wrong and nothing is created).
- ``options`` in a request is JSON: an unknown key is dropped with a warning
  (clients send options meant for other servers), a known key of the wrong JSON
  type is an error whose message is Ollama's, e.g. ``option "stop" must be of
  type array``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any

log = logging.getLogger(__name__)


class InvalidOption(ValueError):
    """An option or PARAMETER whose key is unknown or whose value has the wrong type."""


class OptionType(Enum):
    INT = "integer"
    FLOAT = "float32"  # Ollama's options are float32; its error messages say so
    BOOL = "boolean"
    STRING_LIST = "array"


ParameterValue = int | float | bool | str
"""One PARAMETER line's value; a ``stop`` line gives one string of the list."""

OPTIONS: Mapping[str, OptionType] = MappingProxyType(
    {
        # Load-time: changing one means reloading the model.
        "num_ctx": OptionType.INT,
        "num_batch": OptionType.INT,
        "num_gpu": OptionType.INT,
        "main_gpu": OptionType.INT,
        "use_mmap": OptionType.BOOL,
        "num_thread": OptionType.INT,
        # Per request.
        "num_keep": OptionType.INT,
        "seed": OptionType.INT,
        "num_predict": OptionType.INT,
        "top_k": OptionType.INT,
        "top_p": OptionType.FLOAT,
        "min_p": OptionType.FLOAT,
        "typical_p": OptionType.FLOAT,
        "repeat_last_n": OptionType.INT,
        "temperature": OptionType.FLOAT,
        "repeat_penalty": OptionType.FLOAT,
        "presence_penalty": OptionType.FLOAT,
        "frequency_penalty": OptionType.FLOAT,
        "stop": OptionType.STRING_LIST,
        # Older Ollama releases accepted these; Modelfiles written then still carry them
        # (``PARAMETER mirostat 0``), so they parse and validate but change nothing.
        "tfs_z": OptionType.FLOAT,
        "mirostat": OptionType.INT,
        "mirostat_tau": OptionType.FLOAT,
        "mirostat_eta": OptionType.FLOAT,
        "penalize_newline": OptionType.BOOL,
        "numa": OptionType.BOOL,
        "low_vram": OptionType.BOOL,
        "f16_kv": OptionType.BOOL,
        "logits_all": OptionType.BOOL,
        "vocab_only": OptionType.BOOL,
        "use_mlock": OptionType.BOOL,
    }
)

LOAD_TIME_OPTIONS = frozenset(
    {"num_ctx", "num_batch", "num_gpu", "main_gpu", "use_mmap", "num_thread"}
)
"""Options fixed when a model is loaded; a request that changes one needs a reload."""

IGNORED_OPTIONS = frozenset(
    {
        "tfs_z",
        "mirostat",
        "mirostat_tau",
        "mirostat_eta",
        "penalize_newline",
        "numa",
        "low_vram",
        "f16_kv",
        "logits_all",
        "vocab_only",
        "use_mlock",
    }
)
"""Accepted for compatibility with old Modelfiles and clients; they have no effect."""

# Go's strconv.ParseInt / ParseBool, which Ollama uses for PARAMETER values: Python's
# int() would also take "1_000" and " 5 ", float() "1_0"; those are refused here.
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def parse_parameter(key: str, value: str) -> ParameterValue:
    """The typed value of one ``PARAMETER key value`` line; InvalidOption if it is wrong.

    For ``stop`` (a list) this is one string; ``collect_parameters`` accumulates them.
    """
    kind = OPTIONS.get(key)
    if kind is None:
        raise InvalidOption(f"unknown parameter '{key}'")
    if kind is OptionType.STRING_LIST:
        return value
    if kind is OptionType.INT:
        if _INT.fullmatch(value) is None:
            raise InvalidOption(f"invalid int value {value!r} for parameter '{key}'")
        return int(value)
    if kind is OptionType.FLOAT:
        if _FLOAT.fullmatch(value) is None:
            raise InvalidOption(f"invalid float value {value!r} for parameter '{key}'")
        return float(value)
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidOption(f"invalid bool value {value!r} for parameter '{key}'")


def collect_parameters(pairs: Iterable[tuple[str, ParameterValue]]) -> dict[str, Any]:
    """PARAMETER lines as the params layer stores them: the last value of a key wins,
    list options (``stop``) accumulate in order."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if OPTIONS.get(key) is OptionType.STRING_LIST:
            out.setdefault(key, []).append(value)
        else:
            out[key] = value
    return out


def validate_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Request ``options`` with JSON types checked and values normalised.

    Unknown keys are dropped with a warning; null values are dropped (they mean
    "not set"); a known key with the wrong JSON type raises InvalidOption.
    """
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = OPTIONS.get(key)
        if kind is None:
            log.warning("ignoring unknown option %r", key)
            continue
        if value is None:
            continue
        out[key] = _typed(key, kind, value)
    return out


def _typed(key: str, kind: OptionType, value: Any) -> Any:
    # bool is an int subclass in Python; JSON true is never a number.
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if kind is OptionType.INT:
        if not is_number or (isinstance(value, float) and not math.isfinite(value)):
            raise InvalidOption(f'option "{key}" must be of type integer')
        # JSON numbers arrive as floats from some clients; truncate as Go's int64() does.
        return int(value)
    if kind is OptionType.FLOAT:
        if not is_number:
            raise InvalidOption(f'option "{key}" must be of type float32')
        return float(value)
    if kind is OptionType.BOOL:
        if not isinstance(value, bool):
            raise InvalidOption(f'option "{key}" must be of type boolean')
        return value
    if not isinstance(value, list):
        raise InvalidOption(f'option "{key}" must be of type array')
    if not all(isinstance(item, str) for item in value):
        raise InvalidOption(f'option "{key}" must be of an array of strings')
    return list(value)
