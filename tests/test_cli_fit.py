"""``pollama fit`` end to end on the demo model: the command's own entry point, run in
this process through typer's test runner (no interpreter start per case); one case runs
the installed command, as users do."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pollama.cli.app import app
from pollama.demo import demo_model_path
from pollama.ggufmeta import read_model

N_LAYERS = 31  # SmolLM2: 30 blocks + the output layer


@dataclass(frozen=True)
class Ran:
    returncode: int
    stdout: str
    stderr: str


def pollama(*args: str, env: dict[str, str] | None = None) -> Ran:
    """``pollama ARGS`` in this process; an exception of ours fails the test, not hides."""
    environ: dict[str, str | None] = {"POLLAMA_GPUS": None, **(env or {})}
    result = CliRunner().invoke(app, list(args), env=environ)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return Ran(result.exit_code, result.stdout, result.stderr)


def installed(*args: str) -> subprocess.CompletedProcess[str]:
    """``pollama ARGS`` as users run it: the installed entry point, a process of its own."""
    environ = {k: v for k, v in os.environ.items() if k != "POLLAMA_GPUS"}
    return subprocess.run(
        [sys.executable, "-m", "pollama", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=environ,
    )


def fit_json(*args: str, env: dict[str, str] | None = None) -> dict:
    result = pollama("fit", "smollm2", "--json", *args, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_two_simulated_gpus_the_small_one_stays_empty():
    report = fit_json("--gpu", "cuda:1GiB", "--gpu", "cuda:64MiB")
    big, small = report["devices"]
    assert (big["library"], big["id"], small["id"]) == ("CUDA", "0", "1")
    assert big["layers"] == list(range(N_LAYERS))
    assert small["layers"] == [] and small["total"] == 0
    assert report["cpu"]["layers"] == []
    assert report["layers"] == {"total": N_LAYERS, "gpu": N_LAYERS}
    assert big["total"] == big["weights"] + big["cache"] + big["graph"]
    assert big["graph"] > 0 and big["cache"] > 0
    assert report["vram"] == big["total"]
    # Only the input embeddings stay in system memory.
    assert report["cpu"]["total"] == report["cpu"]["input_weights"] > 0
    assert report["total"] == report["vram"] + report["cpu"]["total"]
    # With tied embeddings the offloaded output layer carries a copy of token_embd.
    assert big["weights"] > report["cpu"]["input_weights"]


def test_no_gpus_everything_on_the_cpu():
    report = fit_json()
    assert report["devices"] == []
    assert report["vram"] == 0
    cpu = report["cpu"]
    assert cpu["layers"] == list(range(N_LAYERS))
    assert report["total"] == cpu["total"]
    assert cpu["weights"] + cpu["input_weights"] == sum_tensor_bytes()
    assert report["use_mmap"] is False  # CPU-only loads allocate instead of mapping


def sum_tensor_bytes() -> int:
    from pollama.ggufmeta import read_model

    return sum(t.n_bytes for t in read_model(demo_model_path()).tensors)


def test_simulated_gpus_from_the_environment():
    report = fit_json(env={"POLLAMA_GPUS": "rocm:2GiB"})
    assert [(d["library"], d["id"]) for d in report["devices"]] == [("ROCm", "0")]
    assert report["layers"]["gpu"] == N_LAYERS


def test_long_context_splits_between_gpu_and_cpu():
    report = fit_json("--gpu", "cuda:1GiB", "--num-ctx", "8192", "--parallel", "4")
    (gpu,) = report["devices"]
    assert 0 < report["layers"]["gpu"] < N_LAYERS
    assert N_LAYERS - 1 not in gpu["layers"]  # the output layer goes to the CPU first
    assert gpu["total"] <= gpu["free"] - 457 * 1024 * 1024
    assert sorted(gpu["layers"] + report["cpu"]["layers"]) == list(range(N_LAYERS))


def test_forced_num_gpu_and_context_clamp():
    report = fit_json("--gpu", "cuda:24GiB", "--num-gpu", "10", "--num-ctx", "100000")
    assert report["layers"]["gpu"] == 10
    assert report["devices"][0]["layers"] == list(range(20, 30))
    assert report["num_ctx"] == 8192
    assert any("too large" in w for w in report["warnings"])


def test_quantized_cache_is_smaller_and_turns_flash_attention_on():
    f16 = fit_json("--num-ctx", "4096")
    q8 = fit_json("--num-ctx", "4096", "--kv-cache-type", "q8_0")
    assert q8["kv_cache_type"] == "q8_0" and q8["flash_attention"] == "enabled"
    assert q8["cpu"]["cache"] < f16["cpu"]["cache"]
    off = fit_json("--kv-cache-type", "q8_0", "--flash-attention", "off")
    assert off["kv_cache_type"] == "f16"
    assert any("flash attention" in w for w in off["warnings"])


def test_table_output():
    result = pollama("fit", "smollm2", "--gpu", "cuda:1GiB", "--gpu", "cuda:64MiB")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "31/31 layers on GPU" in out
    assert "CUDA:0" in out and "CUDA:1" in out and "CPU" in out
    assert "100% GPU" in out
    cpu_only = pollama("fit", "smollm2")
    assert "0/31 layers on GPU" in cpu_only.stdout and "100% CPU" in cpu_only.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["smollm2", "--ram", "10MiB"], "requires more system memory"),
        (["smollm2", "--gpu", "cuda:64MiB", "--require-full"], "unable to load full model"),
        (["smollm2", "--gpu", "cuda:lots"], "cuda:lots"),
        (["no-such-model"], "not found"),
    ],
)
def test_cannot_load_exits_1_with_one_line(args: list[str], reason: str):
    result = installed("fit", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and reason in lines[0], result.stderr
    assert "Traceback" not in result.stderr


def test_corrupt_model_file_exits_1(tmp_path: Path):
    broken = tmp_path / "broken.gguf"
    with open(demo_model_path(), "rb") as src:
        broken.write_bytes(src.read(5000))
    result = pollama("fit", str(broken))
    assert result.returncode == 1
    assert "invalid model file" in result.stderr and str(broken) in result.stderr
    not_gguf = tmp_path / "notes.txt"
    shutil.copy(__file__, not_gguf)
    assert "invalid model file" in pollama("fit", str(not_gguf)).stderr


def test_mapped_weights_with_extra_buffers_count_the_repacked_copies(q4_0_model):
    # Q4_0 is what the CPU repackers and AMX take: with the file mapped and the extra
    # buffer types on, llama.cpp holds those weights twice, and fit says so.
    def weights(setting: str, mmap: str) -> tuple[int, dict]:
        result = pollama(
            "fit",
            str(q4_0_model),
            "--json",
            mmap,
            env={"POLLAMA_CPU_EXTRA_BUFFERS": setting},
        )
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        return report["cpu"]["weights"] + report["cpu"]["input_weights"], report

    off, report_off = weights("off", "--mmap")
    on, report_on = weights("on", "--mmap")
    assert report_off["use_mmap"] and report_off["extra_buffers"]["on"] is False
    assert report_on["extra_buffers"]["on"] is True
    assert off == sum(t.n_bytes for t in read_model(q4_0_model).tensors)  # the file's bytes
    if report_on["extra_buffers"]["types"]:  # this build has AMX or CPU_REPACK
        assert on > 1.5 * off  # nearly every weight is held twice
        unmapped, _ = weights("on", "--no-mmap")
        assert off < unmapped < on  # only the tied LM head's copy
    else:
        assert on == off


def test_a_ray_replica_reserves_what_fit_plans():
    # pollama ray up --model sizes each replica with fit's own plan, with the options a
    # request that sets none would load with.
    from pollama.cli.fit import model_needs
    from pollama.settings import Settings

    for parallel in (1, 2):
        memory, on_gpu = model_needs("smollm2", Settings.from_env({}), parallel=parallel)
        assert memory == fit_json("--parallel", str(parallel))["cpu"]["total"]
        assert on_gpu is False
