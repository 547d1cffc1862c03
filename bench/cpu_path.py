"""What the plain CPU path costs: llama.cpp's extra buffer types (AMX, CPU_REPACK) on vs off.

    python -m bench.cpu_path [--runs 7] [--tokens 128]

On a CPU where both paths run, for the demo model (Q4_1 blocks, Q8_0 embeddings)
and for it requantized to Q4_0 (a type the x86 and ARM repackers and AMX take),
measures prompt evaluation (about 400 tokens) and greedy decode with the raw
engine loop (``bench.raw``), 2 threads, each run measuring both paths back to
back in alternating order; the ratio is the median of the per-run ratios
(on ÷ off). This is the cost pollama's ``auto`` pays where the extra path traps.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.raw import RawEngine
from pollama.demo import demo_model_path
from pollama.devices.cpu import read_cpu
from pollama.protocol.wire import SamplingOptions

PROMPT = (
    "<|im_start|>system\nYou are a careful assistant who answers in detail.<|im_end|>\n"
    "<|im_start|>user\n"
    + " ".join(
        f"Point {i}: the lighthouse keeper counted the waves and the gulls." for i in range(30)
    )
    + "\nSummarise.<|im_end|>\n<|im_start|>assistant\n"
)
GREEDY = SamplingOptions(temperature=0, repeat_penalty=1.0)
NUM_CTX = 2048


@dataclass
class Figures:
    prompt: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})
    decode: dict[bool, list[float]] = field(default_factory=lambda: {True: [], False: []})

    @staticmethod
    def ratio(series: dict[bool, list[float]]) -> float:
        pairs = zip(series[True], series[False], strict=True)
        return statistics.median(on / off for on, off in pairs)


def measure(path: Path, runs: int, tokens: int, threads: int) -> Figures:
    engines = {
        extra: RawEngine.open(path, num_ctx=NUM_CTX, n_seq=1, threads=threads, extra_buffers=extra)
        for extra in (True, False)
    }
    figures = Figures()
    try:
        for engine in engines.values():  # warm both up
            engine.prompt_rate(PROMPT)
            engine.decode_rate(PROMPT, GREEDY, 8)
        for run in range(runs):
            for extra in (True, False) if run % 2 == 0 else (False, True):
                figures.prompt[extra].append(engines[extra].prompt_rate(PROMPT))
                figures.decode[extra].append(engines[extra].decode_rate(PROMPT, GREEDY, tokens))
    finally:
        for engine in engines.values():
            engine.close()
    return figures


def requantize(source: Path, target: Path, kind: str) -> Path:
    script = Path(__file__).resolve().parent.parent / "tests" / "requantize.py"
    subprocess.run(
        [sys.executable, str(script), str(source), str(target), kind],
        check=True,
        capture_output=True,
    )
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    demo = demo_model_path()
    with tempfile.TemporaryDirectory() as tmp:
        models = {
            "SmolLM2-135M Q4_1 (demo)": demo,
            "SmolLM2-135M Q4_0 (requantized)": requantize(demo, Path(tmp) / "q4_0.gguf", "Q4_0"),
        }
        print(f"cpu: {read_cpu().model} ({platform.machine()}), threads {args.threads}")
        print(f"runs {args.runs}, decode {args.tokens} tokens, prompt ~400 tokens\n")
        print("| model | prompt tok/s on / off | on ÷ off | decode tok/s on / off | on ÷ off |")
        print("|---|---|---|---|---|")
        for name, path in models.items():
            f = measure(path, args.runs, args.tokens, args.threads)
            prompt = [statistics.median(f.prompt[extra]) for extra in (True, False)]
            decode = [statistics.median(f.decode[extra]) for extra in (True, False)]
            print(
                f"| {name} | {prompt[0]:.0f} / {prompt[1]:.0f} | {Figures.ratio(f.prompt):.2f}× "
                f"| {decode[0]:.1f} / {decode[1]:.1f} | {Figures.ratio(f.decode):.2f}× |"
            )


if __name__ == "__main__":
    main()
