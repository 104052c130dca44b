"""benchmarks/gpu_check.sh on this machine: without CUDA it runs, says which steps it skipped and why,
and writes its JSON; --quick runs the benchmark step on the CPU (small preset) so the plumbing is checked."""
import json
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
CUDA_STEPS = ("cuda_tests", "bench_fp32_bf16", "bench_fp16", "bench_compile")


def gpu_check(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU run; a GPU runs the real steps")
def test_quick_run_on_a_cpu_skips_the_cuda_steps_and_says_so(tmp_path):
    out = tmp_path / "check.json"
    proc = gpu_check("--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    steps = report["steps"]
    for name in (*CUDA_STEPS, "train_ddp_2gpu"):
        assert steps[name]["status"] == "skipped" and "no CUDA device" in steps[name]["reason"]
        assert f"[gpu_check] {name}: skipped (no CUDA device" in proc.stdout
    bench = steps["bench_cpu_quick"]
    assert bench["status"] == "ok", bench
    row, = bench["result"]
    assert row["mode"] == "fp32" and row["batch"] == 1
    per = row["seconds_per_item"]
    assert per["end_to_end"] > 0 and per["mesh_24"] > 0
    assert row["video_frames_per_s"] == pytest.approx(1 / per["novel_view"], rel=0.02)
    assert report["env"]["gpus"] == [] and report["quick"] is True and f"wrote {out}" in proc.stdout


def test_a_spent_budget_skips_steps_and_still_writes_the_report(tmp_path):
    out = tmp_path / "check.json"
    proc = gpu_check("--quick", "--budget", "1", "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = json.loads(out.read_text())["steps"]
    assert all(s["status"] == "skipped" for s in steps.values())
    ran = "bench_fp32_bf16" if torch.cuda.is_available() else "bench_cpu_quick"
    assert "budget is spent" in steps[ran]["reason"]


def test_bad_budget_is_refused(tmp_path):
    proc = gpu_check("--budget", "0", "--out", str(tmp_path / "x.json"), timeout=300)
    assert proc.returncode == 2 and "--budget must be positive" in proc.stderr
    assert not (tmp_path / "x.json").exists()
