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
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any

from pollama.errors import InvalidOption
from pollama.settings import DRAFT_MAX

log = logging.getLogger(__name__)


class OptionType(Enum):
    INT = "integer"
    FLOAT = "float32"  # Ollama's options are float32; its error messages say so
    BOOL = "boolean"
    STRING_LIST = "array"


ParameterValue = int | float | bool | str
"""One PARAMETER line's value; a ``stop`` line gives one string of the list."""


class OptionKind(Enum):
    LOAD = "load"
    """Fixed when a model is loaded: a request that changes one reloads the model."""
    SAMPLING = "sampling"
    """Per request: how the runner samples and when it stops."""
    IGNORED = "ignored"
    """Older Ollama releases accepted it; Modelfiles written then still carry it
    (``PARAMETER mirostat 0``), so it parses and validates but changes nothing."""


@dataclass(frozen=True)
class Option:
    type: OptionType
    kind: OptionKind
    default: Any = None
    """Ollama's default; None where the server decides (num_ctx from
    OLLAMA_CONTEXT_LENGTH, use_mmap by the memory plan) or it is ignored."""
    bounds: tuple[int, int] | None = None
    """Allowed range of an integer option, where a huge value would cost memory or time
    (a context of 2^40 tokens, a billion-token reply): outside it is a 400."""


_HUGE = 1 << 24  # tokens: far beyond any model's context today


def _load(kind: OptionType, default: Any, bounds: tuple[int, int] | None = None) -> Option:
    return Option(kind, OptionKind.LOAD, default, bounds)


def _sampling(kind: OptionType, default: Any, bounds: tuple[int, int] | None = None) -> Option:
    return Option(kind, OptionKind.SAMPLING, default, bounds)


_IGNORED = {
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

OPTIONS: Mapping[str, Option] = MappingProxyType(
    {
        "num_ctx": _load(OptionType.INT, None, (1, _HUGE)),
        "num_batch": _load(OptionType.INT, 512, (1, _HUGE)),
        "num_gpu": _load(OptionType.INT, -1, (-1, _HUGE)),
        "main_gpu": _load(OptionType.INT, 0, (0, 1024)),
        "use_mmap": _load(OptionType.BOOL, None),
        "num_thread": _load(OptionType.INT, 0, (0, 4096)),
        "num_keep": _sampling(OptionType.INT, 4, (-1, _HUGE)),
        "seed": _sampling(OptionType.INT, -1),
        "num_predict": _sampling(OptionType.INT, -1, (-2, _HUGE)),
        "top_k": _sampling(OptionType.INT, 40),
        "top_p": _sampling(OptionType.FLOAT, 0.9),
        "min_p": _sampling(OptionType.FLOAT, 0.0),
        "typical_p": _sampling(OptionType.FLOAT, 1.0),
        "repeat_last_n": _sampling(OptionType.INT, 64, (-1, _HUGE)),
        "temperature": _sampling(OptionType.FLOAT, 0.8),
        "repeat_penalty": _sampling(OptionType.FLOAT, 1.0),
        "presence_penalty": _sampling(OptionType.FLOAT, 0.0),
        "frequency_penalty": _sampling(OptionType.FLOAT, 0.0),
        "stop": _sampling(OptionType.STRING_LIST, ()),
        # pollama's own: the most tokens speculative decoding drafts per step (0: none);
        # at most the rows of logits the runner reserves per sequence (DRAFT_MAX).
        "draft_num_predict": _sampling(OptionType.INT, DRAFT_MAX, (0, DRAFT_MAX)),
        **{name: Option(kind, OptionKind.IGNORED) for name, kind in _IGNORED.items()},
    }
)
"""Every option Ollama knows: its JSON type (and so its error text), whether it is fixed
at load time, used per request or ignored, and its default. It drives Modelfile
PARAMETER parsing, request validation, the load options and the sampling options."""


def names(kind: OptionKind) -> tuple[str, ...]:
    """The options of one kind, in the table's order."""
    return tuple(name for name, option in OPTIONS.items() if option.kind is kind)


def default(name: str) -> Any:
    return OPTIONS[name].default


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
    option = OPTIONS.get(key)
    if option is None:
        raise InvalidOption(f"unknown parameter '{key}'")
    kind = option.type
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
        option = OPTIONS.get(key)
        if option is not None and option.type is OptionType.STRING_LIST:
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
        option = OPTIONS.get(key)
        if option is None:
            log.warning("ignoring unknown option %r", key)
            continue
        if value is None:
            continue
        typed = _typed(key, option.type, value)
        if option.bounds is not None and not option.bounds[0] <= typed <= option.bounds[1]:
            low, high = option.bounds
            raise InvalidOption(f'option "{key}" must be between {low} and {high}')
        out[key] = typed
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
        if not is_number or not math.isfinite(value):
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
