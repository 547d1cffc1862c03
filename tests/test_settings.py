"""Settings from Ollama's environment variables, and the units they are written in."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pollama.settings import DEFAULT_PORT, Settings
from pollama.units import GiB, MiB, format_bytes, format_parameter_count, parse_duration, parse_size


def test_defaults_match_ollama():
    s = Settings.from_env({})
    assert (s.host, s.port) == ("127.0.0.1", DEFAULT_PORT)
    assert s.keep_alive == 300 and s.load_timeout == 300
    assert (s.num_parallel, s.max_loaded_models, s.max_queue) == (1, 0, 512)
    assert s.flash_attention is None and s.kv_cache_type == ""
    assert s.models_dir == Path.home() / ".ollama" / "models"


@pytest.mark.parametrize(
    ("raw", "host", "port"),
    [
        ("0.0.0.0", "0.0.0.0", DEFAULT_PORT),
        ("0.0.0.0:8080", "0.0.0.0", 8080),
        ("http://localhost:9000/", "localhost", 9000),
        ("[::1]:7000", "::1", 7000),
        (":5000", "127.0.0.1", 5000),
    ],
)
def test_ollama_host_forms(raw: str, host: str, port: int):
    s = Settings.from_env({"OLLAMA_HOST": raw})
    assert (s.host, s.port) == (host, port)


def test_every_variable_is_read(tmp_path: Path):
    s = Settings.from_env(
        {
            "OLLAMA_MODELS": str(tmp_path),
            "OLLAMA_ORIGINS": "http://a.example, app://b",
            "OLLAMA_KEEP_ALIVE": "-1",
            "OLLAMA_LOAD_TIMEOUT": "10m",
            "OLLAMA_CONTEXT_LENGTH": "8192",
            "OLLAMA_NUM_PARALLEL": "4",
            "OLLAMA_MAX_LOADED_MODELS": "2",
            "OLLAMA_MAX_QUEUE": "10",
            "OLLAMA_DEBUG": "1",
            "OLLAMA_FLASH_ATTENTION": "false",
            "OLLAMA_KV_CACHE_TYPE": "Q8_0",
            "OLLAMA_GPU_OVERHEAD": "536870912",
            "OLLAMA_SCHED_SPREAD": "true",
            "OLLAMA_NOPRUNE": "1",
            "POLLAMA_GPUS": "cuda:8GiB",
        }
    )
    assert s.models_dir == tmp_path
    assert s.origins == ("http://a.example", "app://b")
    assert math.isinf(s.keep_alive)
    assert s.load_timeout == 600
    assert (s.context_length, s.num_parallel, s.max_loaded_models, s.max_queue) == (8192, 4, 2, 10)
    assert s.debug and s.sched_spread and s.noprune
    assert s.flash_attention is False
    assert s.kv_cache_type == "q8_0"
    assert s.gpu_overhead == 512 * MiB
    assert s.simulated_gpus == "cuda:8GiB"


def test_bad_values_fall_back_to_defaults():
    s = Settings.from_env(
        {"OLLAMA_NUM_PARALLEL": "zero", "OLLAMA_MAX_QUEUE": "-3", "OLLAMA_KEEP_ALIVE": "soon"}
    )
    assert (s.num_parallel, s.max_queue, s.keep_alive) == (1, 512, 300)


def test_units():
    assert parse_size("24GiB") == 24 * GiB
    assert parse_size("512 MiB") == 512 * MiB
    assert parse_size("8GB") == 8_000_000_000
    with pytest.raises(ValueError, match="lots"):
        parse_size("lots")
    assert parse_duration("1h30m") == 5400
    assert parse_duration("-1m") == -60
    assert parse_duration("250ms") == 0.25
    with pytest.raises(ValueError):
        parse_duration("300")  # a bare number is not a Go duration
    for bad in ("", "  ", "-", "5x", "m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(102_510_000) == "97.8 MiB"
    assert format_parameter_count(134_515_008) == "134.52M"
    assert format_parameter_count(8_030_261_248) == "8.0B"
    assert format_parameter_count(7_000_000_000) == "7B"
