"""``python -m bench <benchmark> [options]``: the benchmarks by name.

python -m bench compare    # pollama vs llama-server vs llama-cpp-python vs the raw engine
python -m bench coldstart  # cold start, swap, `pollama run`, RSS: two checkouts (bench.coldstart)
python -m bench cpu_path   # llama.cpp's extra CPU buffer types on vs off (bench.cpu_path)
python -m bench soak       # N clients for M minutes: failures, latency, leaks (bench.soak)
python -m bench clients_ab # many streaming clients: this checkout vs another (bench.clients_ab)
python -m bench spec       # speculative decoding on vs off: decode rate ratios (bench.spec)
python -m bench omp_wait   # OpenMP workers passive vs libgomp's default (bench.omp_wait)
python -m bench rayscale   # pollama on Ray Serve: 2 replicas vs 1, the proxy, prefix hits
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "coldstart": "bench.coldstart",
    "compare": "bench.compare.cli",
    "cpu_path": "bench.cpu_path",
    "soak": "bench.soak",
    "clients_ab": "bench.clients_ab",
    "spec": "bench.spec",
    "omp_wait": "bench.omp_wait",
    "rayscale": "bench.rayscale",
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
        # The others read sys.argv themselves.
        sys.argv = [f"python -m bench {name}", *rest]
        module.main()


if __name__ == "__main__":
    main(sys.argv[1:])
