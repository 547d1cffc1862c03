"""``python -m bench omp_wait [pairs]``: single-stream decode with the runner's OpenMP
workers passive (``OMP_WAIT_POLICY=passive``) vs libgomp's default, two servers side by
side, 128-token greedy decodes alternating; prints each pair and the median ratio."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import httpx

SIDES = {"passive": (11501, {"OMP_WAIT_POLICY": "passive"}), "default": (11502, {})}


def _start(port: int, extra: dict[str, str]) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env |= {
        "OLLAMA_HOST": f"127.0.0.1:{port}",
        "OLLAMA_MODELS": tempfile.mkdtemp(),
        "POLLAMA_SPARE_RUNNER": "0",
        **extra,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "pollama", "serve"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/api/version", timeout=1)
            return process
        except httpx.HTTPError:
            time.sleep(0.1)  # polling a server we started; not synchronisation in a test
    raise RuntimeError(f"pollama serve on port {port} did not start")


def _rate(port: int, tokens: int = 128) -> float:
    body = {
        "model": "smollm2",
        "prompt": "Tell me a long story about the sea.",
        "stream": False,
        "options": {"num_predict": tokens, "temperature": 0, "num_ctx": 2048},
    }
    reply = httpx.post(f"http://127.0.0.1:{port}/api/generate", json=body, timeout=600).json()
    return float(reply["eval_count"]) / (reply["eval_duration"] / 1e9)


def main() -> None:
    argv = sys.argv[1:]
    pairs = int(argv[0]) if argv else 5
    processes = [_start(port, extra) for port, extra in SIDES.values()]
    try:
        for port, _ in SIDES.values():
            _rate(port, 4)  # load the model
        ratios = []
        for i in range(pairs):
            order = list(SIDES) if i % 2 == 0 else list(reversed(SIDES))
            got = {side: _rate(SIDES[side][0]) for side in order}
            ratios.append(got["passive"] / got["default"])
            print(
                i,
                {k: round(v, 1) for k, v in got.items()},
                round(ratios[-1], 3),
                f"load {os.getloadavg()[0]:.2f}",
                flush=True,
            )
        print("median passive/default", round(statistics.median(ratios), 3))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


if __name__ == "__main__":
    main()
