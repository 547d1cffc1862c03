"""``python -m bench <benchmark> [options]``: the benchmarks by name.

python -m bench compare   # pollama vs llama-server vs llama-cpp-python, end to end
python -m bench http      # /api/generate vs the raw engine (also: python -m bench.http)
python -m bench runner    # LlamaServer vs the raw engine (also: python -m bench.runner)
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "compare": "bench.compare.cli",
    "http": "bench.http",
    "runner": "bench.runner",
}


def main(argv: list[str]) -> None:
    if not argv or argv[0] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(COMMANDS[name])
    if name == "compare":
        module.main(rest)
    else:
        # The older benchmarks read sys.argv themselves.
        sys.argv = [f"python -m bench {name}", *rest]
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
