"""The comparison as markdown (pure): the table, the targets, the docs section."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bench.compare.stats import (
    POLLAMA,
    RAW,
    SERVERS,
    Metric,
    Runs,
    Verdict,
    median_of,
    ratio,
)

BEGIN = "<!-- compare:begin -->"
END = "<!-- compare:end -->"
DASH = "—"


def servers_in(runs: Runs) -> list[str]:
    """The servers measured in any run, in the canonical order."""
    seen = {server for run in runs for server, figures in run.items() if figures}
    return [s for s in SERVERS if s in seen] + sorted(seen - set(SERVERS))


def _number(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return DASH if value is None else f"{value:.3f}"


def render_table(runs: Runs, rows: Sequence[Metric], subject: str = POLLAMA) -> str:
    """One row per metric measured anywhere: each server's median, then ``subject``'s
    per-run paired ratio to every other server."""
    servers = servers_in(runs)
    peers = [s for s in servers if s != subject] if subject in servers else []
    header = ["workload", "unit", *servers, *(f"{subject} ÷ {p}" for p in peers)]
    lines = [
        "| " + " | ".join(header) + " |",
        "|---|---|" + "---:|" * (len(servers) + len(peers)),
    ]
    for metric in rows:
        medians = [median_of(runs, s, metric.key) for s in servers]
        if all(m is None for m in medians):
            continue
        cells = [metric.label, metric.unit]
        cells += [_number(m, metric.digits) for m in medians]
        if metric.paired:
            cells += [_ratio(ratio(runs, subject, p, metric)) for p in peers]
        else:
            cells += [""] * len(peers)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_ceiling(runs: Runs, rows: Sequence[Metric]) -> str:
    """Every server's ratio to the raw engine, for the metrics the raw engine measures."""
    servers = [s for s in servers_in(runs) if s != RAW]
    measured = [m for m in rows if m.paired and median_of(runs, RAW, m.key) is not None]
    if not measured or not servers:
        return ""
    lines = [
        "| workload | " + " | ".join(f"{s} ÷ raw" for s in servers) + " |",
        "|---|" + "---:|" * len(servers),
    ]
    for metric in measured:
        cells = [_ratio(ratio(runs, s, RAW, metric)) for s in servers]
        lines.append(f"| {metric.label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_targets(verdicts: Sequence[Verdict]) -> str:
    lines = ["| target | per run | verdict |", "|---|---|---|"]
    for v in verdicts:
        per_run = ", ".join(f"{x:.3f}" for x in v.runs) or DASH
        verdict = v.describe()
        if v.met is not None:
            verdict = f"**{verdict}**"
        lines.append(f"| {v.target.label} | {per_run} | {verdict} |")
    return "\n".join(lines)


def render_verdicts_plain(verdicts: Sequence[Verdict]) -> str:
    """The targets for a terminal: one line each."""
    return "\n".join(f"- {v.target.label}: {v.describe()}" for v in verdicts)


DESCRIPTION = """\
Each server is started as its own process on the same GGUF (the demo model), with
the same thread count and context per sequence, and measured end to end over
HTTP by a client on `http.client` streaming OpenAI's `/v1/chat/completions` (and
`/v1/embeddings`), the one API all three speak. Decoding is greedy (temperature
0) from a fixed prompt; token counts come from the server's reported usage (or
`finish_reason: length`). A run goes stage by stage (single stream; embeddings;
each concurrency level), every server taking its turn at a stage before the next
begins (the order rotates between runs); one server works at a time. For single
stream and embeddings each server is started afresh for its turn; at a
concurrency level all are started with that many slots and kept loaded (idle,
they use no CPU), and rounds of simultaneous requests, one per client, alternate
between them (A B C, then C B A, ...), so their figures are taken seconds apart.
Every ratio is taken run by run, then its median reported — the machine's speed
drifts by tens of percent within minutes, and this cancels it out. The raw
engine, the ceiling for decode and prompt evaluation, is `bench/raw.py`'s
llama.cpp loop in the benchmark process: kept loaded, it runs right after each
server's decode request (three pairs per turn) and prompt evaluation, while that
server idles, and each server's ratio to it is taken pair by pair within the
turn (its column: the median of those runs).

- **pollama**: `python -m pollama serve`, an empty temporary store,
  `OLLAMA_NUM_PARALLEL` = the clients under test (restarted per level).
- **llama-server**: llama.cpp's C++ server, `-np <clients> -c <ctx × clients>`.
- **llama-cpp-python**: `python -m llama_cpp.server` with its defaults otherwise
  (one request at a time; `--interrupt_requests false` so a new request queues
  instead of cutting the running stream short).
- Single-stream decode: first streamed token to last. TTFT: request sent to the
  first content. Prompt evaluation: prompt tokens ÷ the whole request time with
  `max_tokens` 1 (a fresh prompt per run, so no cache helps). Concurrency: `--requests`
  (8) per level and server, in rounds (2 at least) of one request per client sent
  at once; aggregate = completion tokens ÷ the rounds' wall time; latency per
  request, sent to last byte. The clients all send the same prompt (as a shared
  system prompt would be). Chat: a ~1,000-token system
  prompt, turn 2 repeats turn 1 and its reply (the prefix cache's case).
  Embeddings: 64 short inputs in one request vs 64 requests one after another.
  Peak RSS: the server's process tree, sampled every 0.2 s; "server + runner" leaves
  out pollama's idle spare runner (a third process, waiting for the next model). Load time: process
  start to the first successful reply.
- Background: the machine is shared. "Other processes' CPU" is how many cores
  processes other than the benchmark and the server under test kept busy during
  that server's turn (the machine's busy CPU time, from `/proc/stat`, less ours);
  with 2 cores and llama.cpp's 2 threads, any of it slows that turn down. Each
  turn waits for a quiet machine first, and a turn during which others used more
  than `--max-other-cpu` (0.3) cores is measured again (`--retries`, once).
- Ratios: the row's server divided by the column's peer, per run, median. For
  times and memory lower is better, so a ratio below 1 favours pollama there."""


def render_section(
    runs: Runs,
    rows: Sequence[Metric],
    verdicts: Sequence[Verdict],
    *,
    command: str,
    machine: Mapping[str, str],
    charts: Sequence[tuple[str, str]] = (),
    notes: Sequence[str] = (),
) -> str:
    """The whole docs section, markers included."""
    parts = [
        BEGIN,
        "## Against the peers: `python -m bench compare`",
        "",
        f"```sh\n{command}\n```",
        "",
        DESCRIPTION,
        "",
        "Machine and versions:",
        "",
        *(f"- {key}: {value}" for key, value in machine.items()),
        "",
        f"Medians of {len(runs)} run{'s' if len(runs) != 1 else ''}:",
        "",
        render_table(runs, rows),
        "",
    ]
    ceiling = render_ceiling(runs, rows)
    if ceiling:
        parts += ["Against the ceiling (per-run ratio to the raw engine, median):", "", ceiling, ""]
    parts += ["Targets (each a ratio measured within one run; median over runs):", ""]
    parts += [render_targets(verdicts), ""]
    for alt, path in charts:
        parts += [f"![{alt}]({path})", ""]
    if notes:
        parts += ["Notes:", "", *(f"- {n}" for n in notes), ""]
    parts.append(END)
    return "\n".join(parts)


def splice(document: str, section: str) -> str:
    """``document`` with the text between the markers (markers included) replaced by
    ``section``; appended at the end when the markers are not there yet."""
    start = document.find(BEGIN)
    end = document.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return document.rstrip("\n") + "\n\n" + section + "\n"
    return document[:start] + section + document[end + len(END) :]
