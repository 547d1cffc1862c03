"""Session-wide test setup."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One state directory for the whole session, as one machine has one: the engine
    probe runs once, not once for every server a test starts (each with its own store).
    Tests about the verdicts themselves pass a directory of their own."""
    path = tmp_path_factory.mktemp("state")
    saved = os.environ.get("POLLAMA_STATE_DIR")
    os.environ["POLLAMA_STATE_DIR"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("POLLAMA_STATE_DIR", None)
    else:
        os.environ["POLLAMA_STATE_DIR"] = saved


def _requantized(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Path:
    """The demo model requantized to ``kind`` throughout (``requantize.py``), once."""
    import subprocess
    import sys

    from pollama.demo import demo_model_path

    path = tmp_path_factory.mktemp(kind.lower()) / f"smollm2-{kind.lower()}.gguf"
    script = Path(__file__).with_name("requantize.py")
    subprocess.run(
        [sys.executable, str(script), str(demo_model_path()), str(path), kind],
        capture_output=True,
        timeout=300,
        check=True,
    )
    return path


@pytest.fixture(scope="session")
def q4_0_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model requantized to Q4_0 throughout: a type llama.cpp repacks on x86
    (AVX2) and ARM, and AMX packs, unlike the demo model's own Q4_1/Q8_0. It is also the
    draft model of the draft-model tests: the Q8_0 copy's vocabulary, other weights."""
    return _requantized(tmp_path_factory, "Q4_0")


@pytest.fixture(scope="session")
def q8_0_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model requantized to Q8_0 throughout: the target of the draft-model tests
    (the Q4_0 copy drafts for it, agreeing often but not always)."""
    return _requantized(tmp_path_factory, "Q8_0")


# Fixtures that start a real runner with the demo model (directly or through a server).
REAL_MODEL_FIXTURES = frozenset(
    {"server", "second", "shared", "solo", "loop", "own_session", "drafting", "plain"}
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``llama`` marks exactly the tests that use the real model: those whose fixtures
    start it (tests that start one in their body carry the mark themselves)."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.llama)
