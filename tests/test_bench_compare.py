"""The pure parts of ``python -m bench compare``: statistics, pairing, markdown, targets."""

from __future__ import annotations

import pytest

from bench.compare import report, stats, workloads
from bench.compare.client import Streamed
from bench.compare.stats import LLAMA_CPP_PYTHON, LLAMA_SERVER, POLLAMA, RAW, Target, Verdict

# Three runs in which background load drifts: every server is slower in run 2, but
# pollama stays at 0.98× raw within each run.
RUNS = [
    {
        RAW: {"decode_tps": 100.0},
        POLLAMA: {"decode_tps": 98.0, "agg_tps_c4": 120.0, "chat_turn2_ratio": 0.2},
        LLAMA_SERVER: {"decode_tps": 99.0, "agg_tps_c4": 110.0},
    },
    {
        RAW: {"decode_tps": 50.0},
        POLLAMA: {"decode_tps": 49.0, "agg_tps_c4": 60.0, "chat_turn2_ratio": 0.25},
        LLAMA_SERVER: {"decode_tps": 52.0, "agg_tps_c4": 62.0},
    },
    {
        RAW: {"decode_tps": 90.0},
        POLLAMA: {"decode_tps": 88.2, "agg_tps_c4": 100.0, "chat_turn2_ratio": 0.5},
        LLAMA_SERVER: {"decode_tps": 90.0},  # its 4-client level failed in this run
    },
]


def test_percentile_interpolates_between_ranks() -> None:
    assert stats.percentile([3.0], 99) == 3.0
    assert stats.percentile([1.0, 3.0], 50) == 2.0
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 0) == 1.0
    assert stats.percentile([4.0, 1.0, 3.0, 2.0], 100) == 4.0
    assert stats.percentile(list(map(float, range(101))), 99) == pytest.approx(99.0)
    assert stats.percentile([10.0, 20.0], 99) == pytest.approx(19.9)
    with pytest.raises(ValueError):
        stats.percentile([], 50)
    with pytest.raises(ValueError):
        stats.percentile([1.0], 101)


def test_median_skips_runs_that_did_not_measure() -> None:
    assert stats.median_of(RUNS, LLAMA_SERVER, "agg_tps_c4") == 86.0
    assert stats.median_of(RUNS, LLAMA_CPP_PYTHON, "decode_tps") is None
    assert stats.median_of(RUNS, RAW, "decode_tps") == 90.0


def test_ratios_are_paired_within_runs_not_taken_of_medians() -> None:
    assert stats.per_run_ratios(RUNS, POLLAMA, RAW, "decode_tps") == pytest.approx(
        [0.98, 0.98, 0.98]
    )
    assert stats.paired_ratio(RUNS, POLLAMA, RAW, "decode_tps") == pytest.approx(0.98)
    # The ratio of the medians would mix runs: with one bad run out of three, the
    # paired median ignores it; the medians' ratio takes pollama's 60 over raw's 80.
    drifting = [
        {POLLAMA: {"x": 98.0}, RAW: {"x": 100.0}},
        {POLLAMA: {"x": 49.0}, RAW: {"x": 50.0}},
        {POLLAMA: {"x": 60.0}, RAW: {"x": 80.0}},
    ]
    assert stats.paired_ratio(drifting, POLLAMA, RAW, "x") == pytest.approx(0.98)
    assert stats.median_of(drifting, POLLAMA, "x") / stats.median_of(drifting, RAW, "x") == 0.75
    # Only the runs that measured both sides pair up.
    assert stats.per_run_ratios(RUNS, POLLAMA, LLAMA_SERVER, "agg_tps_c4") == pytest.approx(
        [120 / 110, 60 / 62]
    )
    assert stats.paired_ratio(RUNS, POLLAMA, LLAMA_CPP_PYTHON, "decode_tps") is None


def test_a_zero_peer_figure_does_not_pair() -> None:
    runs = [{POLLAMA: {"x": 1.0}, RAW: {"x": 0.0}}, {POLLAMA: {"x": 2.0}, RAW: {"x": 4.0}}]
    assert stats.per_run_ratios(runs, POLLAMA, RAW, "x") == [0.5]


def test_targets_against_a_peer_and_on_a_ratio_of_their_own() -> None:
    decode = Verdict(
        Target("decode", "decode_tps", ">=", 0.97, peer=RAW),
        tuple(Target("decode", "decode_tps", ">=", 0.97, peer=RAW).figures(RUNS)),
    )
    assert decode.met is True
    assert decode.shortfall == 0.0
    assert decode.describe() == "met: 0.980× (target ≥ 0.97×)"

    verdicts = stats.check(
        [
            Target("vs llama-server", "agg_tps_c4", ">=", 1.0, peer=LLAMA_SERVER),
            Target("turn 2", "chat_turn2_ratio", "<=", 0.3),
            Target("vs absent peer", "agg_tps_c4", ">=", 1.3, peer=LLAMA_CPP_PYTHON),
        ],
        RUNS,
    )
    vs_server, turn2, absent = verdicts
    # median of 1.0909 and 0.9677
    assert vs_server.figure == pytest.approx((120 / 110 + 60 / 62) / 2)
    assert vs_server.met is True
    assert turn2.runs == (0.2, 0.25, 0.5)
    assert turn2.met is True  # the median, 0.25
    assert absent.met is None
    assert absent.describe() == "not measured"


def test_a_missed_target_says_by_how_much() -> None:
    above = Verdict(Target("ttft", "r", "<=", 0.3), (0.45,))
    assert above.met is False
    assert above.shortfall == pytest.approx(0.5)
    assert above.describe() == "missed by 50.0%: 0.450× (target ≤ 0.3×)"
    below = Verdict(Target("emb", "s", ">=", 3.0), (2.4,))
    assert below.shortfall == pytest.approx(0.2)
    assert below.describe().startswith("missed by 20.0%: 2.400×")


def test_the_project_targets() -> None:
    keyed = {(t.metric, t.peer): (t.op, t.bound) for t in stats.TARGETS}
    assert keyed == {
        ("decode_vs_raw", None): (">=", 0.97),
        ("agg_tps_c4", LLAMA_SERVER): (">=", 1.0),
        ("agg_tps_c4", LLAMA_CPP_PYTHON): (">=", 1.3),
        ("chat_turn2_ratio", None): ("<=", 0.3),
        ("embed_speedup", None): (">=", 3.0),
    }


def test_table_has_medians_and_paired_ratios_and_skips_unmeasured_rows() -> None:
    table = report.render_table(RUNS, stats.metrics([4]))
    lines = table.splitlines()
    assert lines[0] == (
        "| workload | unit | raw | pollama | llama-server | "
        "pollama ÷ raw | pollama ÷ llama-server |"
    )
    assert lines[1] == "|---|---|---:|---:|---:|---:|---:|"
    assert "| single-stream decode | tok/s | 90.0 | 88.2 | 90.0 | 0.980 | 0.980 |" in lines
    aggregate = next(line for line in lines if line.startswith("| 4 clients: aggregate"))
    assert aggregate.split(" | ")[2:] == ["—", "100.0", "86.0", "—", "1.029 |"]
    assert not any("prompt evaluation" in line for line in lines)  # never measured
    assert all(line.count("|") == lines[0].count("|") for line in lines)


def test_against_raw_the_ratio_measured_back_to_back_wins() -> None:
    decode = stats.metrics([])[0]
    assert decode.vs_raw == "decode_vs_raw"
    runs = [
        {RAW: {"decode_tps": 80.0}, POLLAMA: {"decode_tps": 60.0, "decode_vs_raw": 0.97}},
        {RAW: {"decode_tps": 60.0}, POLLAMA: {"decode_tps": 70.0, "decode_vs_raw": 0.95}},
    ]
    assert stats.ratio(runs, POLLAMA, RAW, decode) == pytest.approx(0.96)
    # Without one, or against a peer, turns are paired by run.
    assert stats.ratio(RUNS, POLLAMA, RAW, decode) == pytest.approx(0.98)
    assert stats.ratio(runs, RAW, POLLAMA, decode) == pytest.approx((80 / 60 + 60 / 70) / 2)
    table = report.render_table(runs, [decode])
    assert table.splitlines()[2] == "| single-stream decode | tok/s | 70.0 | 65.0 | 0.960 |"


def test_ceiling_table_divides_every_server_by_raw() -> None:
    table = report.render_ceiling(RUNS, stats.metrics([]))
    assert table.splitlines() == [
        "| workload | pollama ÷ raw | llama-server ÷ raw |",
        "|---|---:|---:|",
        f"| single-stream decode | 0.980 | {stats.paired_ratio(RUNS, LLAMA_SERVER, RAW, 'decode_tps'):.3f} |",  # noqa: E501
    ]
    assert report.render_ceiling([{POLLAMA: {"decode_tps": 1.0}}], stats.metrics([])) == ""


def test_targets_table_and_plain_lines() -> None:
    verdicts = stats.check(stats.TARGETS, RUNS)
    table = report.render_targets(verdicts)
    assert "| chat TTFT turn 2 ÷ turn 1 | 0.200, 0.250, 0.500 | **met: 0.250×" in table
    assert "| single-stream decode ÷ raw engine (back to back) | — | not measured |" in table
    plain = report.render_verdicts_plain(verdicts).splitlines()
    assert plain[3] == "- chat TTFT turn 2 ÷ turn 1: met: 0.250× (target ≤ 0.3×)"


def test_section_is_spliced_between_markers_or_appended() -> None:
    section = report.render_section(
        RUNS,
        stats.metrics([4]),
        stats.check(stats.TARGETS, RUNS),
        command="python -m bench compare --quick",
        machine={"CPU": "test CPU, 2 cores"},
        charts=[("Throughput", "img/compare-throughput.png")],
        notes=["a --quick smoke run"],
    )
    assert section.startswith(report.BEGIN) and section.endswith(report.END)
    assert "```sh\npython -m bench compare --quick\n```" in section
    assert "- CPU: test CPU, 2 cores" in section
    assert "Medians of 3 runs:" in section
    assert "![Throughput](img/compare-throughput.png)" in section
    assert "- a --quick smoke run" in section

    appended = report.splice("# Benchmarks\n\ntext\n", section)
    assert appended == "# Benchmarks\n\ntext\n\n" + section + "\n"
    replaced = report.splice(appended.replace("text", "before") + "after\n", "NEW")
    assert replaced == "# Benchmarks\n\nbefore\n\nNEW\nafter\n"
    # Splicing again replaces, it does not append a second copy.
    assert report.splice(appended, section) == appended


def _streamed(sent: float, done: float, tokens: int) -> Streamed:
    return Streamed(sent, sent + 0.1, done - 0.01, done, tokens, 10, "x" * tokens, tokens)


def test_a_levels_figures_pool_its_rounds() -> None:
    rounds = [
        (2.0, [_streamed(0.0, 2.0, 100), _streamed(0.0, 1.0, 50)]),
        (3.0, [_streamed(10.0, 13.0, 100), _streamed(10.0, 12.0, 100)]),
    ]
    figures = workloads.clients_figures(rounds, 2)
    assert figures["agg_tps_c2"] == pytest.approx(350 / 5.0)
    # Latencies 1, 2, 2, 3 s: the median between the middle two, p99 interpolated near 3.
    assert figures["p50_ms_c2"] == pytest.approx(2000)
    assert figures["p99_ms_c2"] == pytest.approx(2970)
    assert figures["tokens_c2"] == pytest.approx(87.5)
