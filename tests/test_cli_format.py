"""The command line's pure formatting: sizes, relative times, tables, word wrap, show text."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pollama.cli.chat import verbose_stats
from pollama.cli.describe import head, parameter_rows, summary
from pollama.cli.format import (
    WordWrapper,
    columns,
    go_duration,
    human_bytes,
    human_duration,
    human_time,
    parse_time,
    processor,
    rate,
    until,
)
from pollama.cli.manage import list_table, ps_table

NOW = datetime(2026, 11, 25, 10, 20, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1 KB"),
        (1500, "1.5 KB"),
        (98_000_000, "98 MB"),
        (105_430_000, "105 MB"),
        (10_990_000, "10 MB"),
        (1_340_000_000, "1.3 GB"),
        (2_000_000_000, "2 GB"),
        (4_700_000_000_000, "4.7 TB"),
    ],
)
def test_human_bytes_is_decimal_like_ollama(n: int, text: str):
    assert human_bytes(n) == text


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(milliseconds=300), "Less than a second"),
        (timedelta(seconds=1), "1 second"),
        (timedelta(seconds=42), "42 seconds"),
        (timedelta(seconds=61), "About a minute"),
        (timedelta(minutes=2, seconds=59), "2 minutes"),
        (timedelta(minutes=59), "59 minutes"),
        (timedelta(minutes=80), "About an hour"),
        (timedelta(hours=5), "5 hours"),
        (timedelta(days=3), "3 days"),
        (timedelta(days=20), "2 weeks"),
        (timedelta(days=90), "3 months"),
        (timedelta(days=3 * 365), "3 years"),
    ],
)
def test_human_duration(delta: timedelta, text: str):
    assert human_duration(delta) == text


def test_human_time_past_future_forever_and_never():
    assert human_time(NOW - timedelta(minutes=2), NOW) == "2 minutes ago"
    assert human_time(NOW + timedelta(minutes=4, seconds=50), NOW) == "4 minutes from now"
    assert human_time(datetime(2318, 1, 1, tzinfo=UTC), NOW) == "Forever"
    assert human_time(None, NOW) == "Never"


def test_until_column():
    assert until(NOW + timedelta(minutes=5), NOW) == "5 minutes from now"
    assert until(datetime(2318, 1, 1, tzinfo=UTC), NOW) == "Forever"
    assert until(NOW - timedelta(seconds=1), NOW) == "Stopping..."
    assert until(None, NOW) == "Forever"


@pytest.mark.parametrize(
    ("size", "vram", "text"),
    [
        (100, 0, "100% CPU"),
        (100, 100, "100% GPU"),
        (100, 52, "48%/52% CPU/GPU"),
        (3, 1, "67%/33% CPU/GPU"),
        (100, 200, "Unknown"),
    ],
)
def test_processor_split(size: int, vram: int, text: str):
    assert processor(size, vram) == text


def test_parse_time_takes_nanoseconds_and_offsets():
    assert parse_time("2026-11-25T10:20:30.123456789Z") == NOW.replace(microsecond=123456)
    assert parse_time("2026-11-25T11:20:30+01:00") == NOW
    assert parse_time("2026-11-25T10:20:30") == NOW
    assert parse_time("") is None and parse_time("yesterday") is None


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0s"),
        (512, "512ns"),
        (1_500, "1.5µs"),
        (178_890_000, "178.89ms"),
        (9_763_717_000, "9.763717s"),
        (2_000_000_000, "2s"),
        (123_500_000_000, "2m3.5s"),
        (3_723_000_000_000, "1h2m3s"),
    ],
)
def test_go_duration(ns: int, text: str):
    assert go_duration(ns) == text


def test_rate():
    assert rate(24, 800_000_000) == "30.00 tokens/s"
    assert rate(5, 0) == "n/a"


def test_columns_align_without_trailing_space():
    text = columns(("NAME", "ID"), [("smollm2:latest", "abc"), ("x", "defghi")])
    assert text.splitlines() == [
        "NAME              ID",
        "smollm2:latest    abc",
        "x                 defghi",
    ]


def test_list_and_ps_tables():
    models = [
        {
            "name": "smollm2:latest",
            "digest": "3ab7ebedb567" + "0" * 52,
            "size": 98_000_000,
            "modified_at": "2026-11-25T10:18:30.000000001Z",
        }
    ]
    assert list_table(models, NOW).splitlines()[1].split() == [
        "smollm2:latest",
        "3ab7ebedb567",
        "98",
        "MB",
        "2",
        "minutes",
        "ago",
    ]
    running = [
        {
            **models[0],
            "size": 209_000_000,
            "size_vram": 0,
            "context_length": 4096,
            "expires_at": "2026-11-25T10:25:00Z",
        }
    ]
    header, row = ps_table(running, NOW).splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"]
    assert "100% CPU" in row and "4096" in row and row.endswith("4 minutes from now")


def test_word_wrapper_breaks_between_words_and_keeps_newlines():
    wrapper = WordWrapper(10)
    pieces = ["The qu", "ick brown fox ", "jumps over\nthe la", "zy dog"]
    text = "".join(wrapper.feed(piece) for piece in pieces) + wrapper.flush()
    assert text == "The quick\nbrown fox\njumps over\nthe lazy\ndog"
    assert all(len(line) <= 10 for line in text.splitlines())


def test_word_wrapper_prints_a_word_longer_than_the_width_whole():
    wrapper = WordWrapper(4)
    assert wrapper.feed("a abcdefgh b") + wrapper.flush() == "a\nabcdefgh\nb"


def test_word_wrapper_holds_back_only_the_unfinished_word():
    wrapper = WordWrapper(80)
    assert wrapper.feed("Hello wor") == "Hello"
    assert wrapper.feed("ld ") == " world"
    assert wrapper.flush() == ""


SHOW = {
    "details": {"family": "llama", "parameter_size": "134.52M", "quantization_level": "Q4_1"},
    "model_info": {
        "general.architecture": "llama",
        "llama.context_length": 8192,
        "llama.embedding_length": 576,
    },
    "capabilities": ["completion", "tools"],
    "parameters": 'stop                           "<|im_end|>"\ntemperature                    0.2',
    "system": "You are terse.\n\nAnswer in one line.\nNever apologise.",
    "license": "Apache License\nVersion 2.0",
}


def test_show_summary_sections():
    text = summary(SHOW)
    assert text.startswith("  Model\n    architecture        llama\n")
    assert "    parameters          134.52M\n" in text
    assert "    context length      8192\n" in text
    assert "    embedding length    576\n" in text
    assert "    quantization        Q4_1\n" in text
    assert "  Capabilities\n    completion\n    tools\n" in text
    assert '  Parameters\n    stop           "<|im_end|>"\n    temperature    0.2\n' in text
    assert "  System\n    You are terse.\n    Answer in one line.\n    ...\n" in text
    assert text.endswith("  License\n    Apache License\n    Version 2.0\n")


def test_show_summary_leaves_out_empty_sections():
    text = summary({"details": {"family": "bert"}, "capabilities": ["embedding"]})
    assert text == "  Model\n    architecture    bert\n\n  Capabilities\n    embedding\n"


def test_parameter_rows_and_head():
    assert parameter_rows('num_ctx   2048\nstop    "a b"\n') == [
        ("num_ctx", "2048"),
        ("stop", '"a b"'),
    ]
    assert head(None) == [] and head("one\n\n two ") == ["one", "two"]


def test_verbose_stats_rates_from_nanoseconds():
    final = {
        "total_duration": 2_000_000_000,
        "load_duration": 1_000_000,
        "prompt_eval_count": 10,
        "prompt_eval_duration": 100_000_000,
        "eval_count": 24,
        "eval_duration": 800_000_000,
    }
    lines = verbose_stats(final).splitlines()
    assert lines[0] == "total duration:       2s"
    assert "prompt eval rate:     100.00 tokens/s" in lines
    assert lines[-1] == "eval rate:            30.00 tokens/s"
