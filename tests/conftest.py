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


@pytest.fixture(scope="session")
def q4_0_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model requantized to Q4_0 throughout: a type llama.cpp repacks on x86
    (AVX2) and ARM, and AMX packs, unlike the demo model's own Q4_1/Q8_0."""
    import subprocess
    import sys

    from pollama.demo import demo_model_path

    path = tmp_path_factory.mktemp("q4_0") / "smollm2-q4_0.gguf"
    script = Path(__file__).with_name("requantize.py")
    subprocess.run(
        [sys.executable, str(script), str(demo_model_path()), str(path), "Q4_0"],
        capture_output=True,
        timeout=300,
        check=True,
    )
    return path


# Fixtures that start a real runner with the demo model (directly or through a server).
REAL_MODEL_FIXTURES = frozenset({"server", "second", "shared", "solo", "loop", "own_session"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """``llama`` marks exactly the tests that use the real model: those whose fixtures
    start it (tests that start one in their body carry the mark themselves)."""
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.llama)
