"""PNG charts of the comparison's medians (matplotlib, the ``bench`` extra)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bench.compare.report import servers_in
from bench.compare.stats import Runs, median_of

COLOURS = {
    "raw": "#888888",
    "pollama": "#1f77b4",
    "llama-server": "#d62728",
    "llama-cpp-python": "#2ca02c",
}


def _bars(ax, runs: Runs, servers: Sequence[str], keys: Sequence[tuple[str, str]], unit: str):
    width = 0.8 / max(len(servers), 1)
    for i, server in enumerate(servers):
        values = [median_of(runs, server, key) or 0.0 for key, _ in keys]
        xs = [k + (i - (len(servers) - 1) / 2) * width for k in range(len(keys))]
        bars = ax.bar(xs, values, width, label=server, color=COLOURS.get(server))
        ax.bar_label(bars, fmt="{:.3g}", fontsize=7)
    ax.set_xticks(range(len(keys)), [label for _, label in keys])
    ax.set_ylabel(unit)


def _save(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw(runs: Runs, levels: Sequence[int], out_dir: Path) -> list[tuple[str, Path]]:
    """Three charts: throughput, concurrency, latency and embeddings. (alt, path) each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    servers = servers_in(runs)
    charts: list[tuple[str, Path]] = []

    fig, ax = plt.subplots(figsize=(7, 3.6))
    keys = [("decode_tps", "single-stream decode"), ("prompt_tps", "prompt evaluation")]
    _bars(ax, runs, servers, keys, "tokens/s")
    ax.set_title("Throughput, median of runs (higher is better)")
    ax.legend(fontsize=8)
    charts.append(("Decode and prompt evaluation, tokens/s", out_dir / "compare-throughput.png"))
    _save(fig, charts[-1][1])

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    for server in servers:
        points = [(c, median_of(runs, server, f"agg_tps_c{c}")) for c in levels]
        xs = [c for c, v in points if v is not None]
        if not xs:
            continue
        colour = COLOURS.get(server)
        left.plot(xs, [v for _, v in points if v is not None], "o-", label=server, color=colour)
        p50 = [median_of(runs, server, f"p50_ms_c{c}") for c in xs]
        right.plot(xs, [v / 1000 for v in p50 if v is not None], "o-", label=server, color=colour)
    for ax, title, unit in (
        (left, "Aggregate throughput", "tokens/s"),
        (right, "Request latency p50", "s"),
    ):
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel(unit)
        ax.set_xticks(list(levels))
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    charts.append(("Clients: throughput and latency", out_dir / "compare-concurrency.png"))
    _save(fig, charts[-1][1])

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    keys = [
        ("ttft_ms", "short prompt"),
        ("chat_ttft1_ms", "chat turn 1"),
        ("chat_ttft2_ms", "chat turn 2"),
    ]
    _bars(left, runs, [s for s in servers if s != "raw"], keys, "ms")
    left.set_title("Time to first token (lower is better)")
    left.legend(fontsize=8)
    keys = [("embed_batch_ips", "64 in one request"), ("embed_single_ips", "64 requests")]
    _bars(right, runs, [s for s in servers if s != "raw"], keys, "inputs/s")
    right.set_title("Embeddings (higher is better)")
    charts.append(("Time to first token and embeddings", out_dir / "compare-latency.png"))
    _save(fig, charts[-1][1])
    return charts
