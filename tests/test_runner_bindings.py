"""The runner imports llama.cpp's bindings, not llama-cpp-python's high-level package
(``pollama/runner/bindings.py``); the whole package still works for anyone who asks.

Each check runs in a fresh interpreter: what is in ``sys.modules`` is the point.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from importlib import metadata


def run_python(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_high_level_api_still_works_after_the_bindings() -> None:
    out = run_python(
        """
        import sys, threading
        from pollama.runner.bindings import L, VERSION
        import llama_cpp
        assert "llama_cpp.llama" not in sys.modules
        names = []
        start = threading.Barrier(4)
        def ask():
            start.wait()
            names.append(llama_cpp.Llama.__name__)  # the first to ask runs __init__, once
        threads = [threading.Thread(target=ask) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        from llama_cpp import LlamaGrammar, llama_cpp as bindings
        assert bindings is L and llama_cpp.llama_backend_init is L.llama_backend_init
        assert llama_cpp.__version__ == VERSION, (llama_cpp.__version__, VERSION)
        assert "numpy" in sys.modules and "__getattr__" not in vars(llama_cpp)
        try:
            llama_cpp.no_such_name
        except AttributeError:
            pass
        else:
            raise AssertionError("a missing name must stay missing")
        print(",".join(names), VERSION)
        """
    )
    assert out.split() == ["Llama,Llama,Llama,Llama", _version()]


def test_the_bindings_use_the_package_when_it_is_already_imported() -> None:
    out = run_python(
        """
        import llama_cpp
        from pollama.runner.bindings import L, M, VERSION
        assert L is llama_cpp.llama_cpp and M.__name__ == "llama_cpp.mtmd_cpp"
        print(VERSION)
        """
    )
    assert out.strip() == _version()


def _version() -> str:
    return metadata.version("llama-cpp-python")


def test_a_spares_imports_leave_out_the_high_level_package_and_hold_the_first_replys() -> None:
    # What a spare imports while it waits for its model: not llama-cpp-python's Llama
    # (its __init__), but what the first streamed reply would otherwise import after
    # the model arrived (anyio's asyncio backend, uvicorn's HTTP protocol) and numpy.
    out = run_python(
        """
        import sys
        import pollama.runner.app
        wanted = ("llama_cpp.llama", "anyio._backends._asyncio",
                  "uvicorn.protocols.http.httptools_impl", "numpy")
        print(sorted(m for m in wanted if m in sys.modules))
        """
    )
    assert out.strip() == str(
        sorted(["anyio._backends._asyncio", "uvicorn.protocols.http.httptools_impl", "numpy"])
    )
