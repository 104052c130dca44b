#!/usr/bin/env bash
# Everything worth measuring on a GPU, in one call of under 8 minutes on one GPU (issue #28):
#   1. the CUDA tests (the parity tests on CUDA among them: fp32 bounds, goldens from ../shared/parity);
#   2. the benchmark's GPU rows (benchmarks/run.py: photo, novel view = video frames/s, preview, mesh,
#      peak memory) for fp32 / bf16 / fp16, and the fast path with torch.compile;
#   3. two-process training steps (torchrun, nccl) where two GPUs exist.
# One JSON under benchmarks/results/ (gpu_check-<device>.json) holds each step's status, time and results.
# On a machine without CUDA it runs too: the CUDA steps are recorded as skipped, with the reason; --quick
# (the CPU test) runs the benchmark step on the CPU with the small preset, to check the script itself.
#   bash benchmarks/gpu_check.sh [--quick] [--budget SECONDS] [--out PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 - "$@" <<'PY'
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path.cwd()
sys.path.insert(0, str(ROOT))
ap = argparse.ArgumentParser(prog="benchmarks/gpu_check.sh", description="The GPU checks of issue #28 in one call.")
ap.add_argument("--quick", action="store_true", help="small preset, one repeat (tests of this script)")
ap.add_argument("--budget", type=float, default=420, help="seconds for all steps together (default 420)")
ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/gpu_check-<device>.json)")
args = ap.parse_args()
if not args.budget > 0:
    ap.error("--budget must be positive")

import torch  # noqa: E402

from goae.io import atomic_write_bytes  # noqa: E402

START = time.monotonic()
CUDA = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if CUDA else 0
NO_CUDA = "no CUDA device (torch.cuda.is_available() is False)"
steps: dict[str, dict] = {}


def say(name: str, text: str) -> None:
    print(f"[gpu_check] {name}: {text}", flush=True)


def skip(name: str, reason: str) -> None:
    steps[name] = {"status": "skipped", "reason": reason}
    say(name, f"skipped ({reason})")


def run(name: str, cmd: list[str], limit: float, env: dict | None = None) -> dict | None:
    """One step in a subprocess, bounded by its own limit and by what is left of the budget."""
    left = args.budget - (time.monotonic() - START)
    if left < 15:
        skip(name, f"the {args.budget:.0f} s budget is spent")
        return None
    limit = min(limit, left)
    say(name, " ".join(cmd) + f"  (limit {limit:.0f} s)")
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, cwd=ROOT, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=limit)
        status, out = ("ok" if p.returncode == 0 else f"failed (exit {p.returncode})"), p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        status = f"timeout after {limit:.0f} s"
        out = "".join(x.decode(errors="replace") if isinstance(x, bytes) else (x or "") for x in (e.stdout, e.stderr))
    steps[name] = {"status": status, "seconds": round(time.monotonic() - t0, 1), "command": cmd,
                   "output_tail": out[-3000:]}
    say(name, f"{status} in {steps[name]['seconds']} s")
    return steps[name]


def bench_summary(report: dict) -> list[dict]:
    """Per (mode, batch): seconds per photo / frame, frames/s of the novel view (video), peak memory."""
    rows = []
    for r in report["runs"]:
        row = {k: r[k] for k in ("mode", "batch") if k in r}
        row["precision"] = (r.get("fast_path") or {}).get("precision", "fp32") if r.get("mode") == "fast" else "fp32"
        if "stages" not in r:
            row["error"] = r.get("error") or r.get("skipped") or "no stages"
            rows.append(row)
            continue
        per = {k: round(s["per_item_s"], 4) for k, s in r["stages"].items()}
        row.update(seconds_per_item=per, video_frames_per_s=round(1 / per["novel_view"], 2) if per.get("novel_view") else None)
        for key in ("cuda_peak_bytes", "cuda_peak_total_bytes", "peak_rss_bytes"):
            if key in r:
                row[key] = r[key]
        rows.append(row)
    return rows


def bench(name: str, extra: list[str], limit: float, device: str, tmp: Path) -> None:
    out = tmp / f"{name}.json"
    step = run(name, [sys.executable, "benchmarks/run.py", "--device", device, "--out", str(out), *extra], limit)
    if step is not None and out.exists():
        step["result"] = bench_summary(json.loads(out.read_text()))


def pytest_summary(step: dict | None) -> None:
    if step is not None:
        lines = [ln for ln in step["output_tail"].splitlines() if " in " in ln and ("passed" in ln or "skipped" in ln
                                                                                    or "failed" in ln or "error" in ln)]
        step["summary"] = lines[-1].strip("= ") if lines else None


env = {"python": platform.python_version(), "torch": torch.__version__, "cuda_runtime": torch.version.cuda,
       "gpus": [torch.cuda.get_device_name(i) for i in range(GPUS)],
       "capability": [".".join(map(str, torch.cuda.get_device_capability(i))) for i in range(GPUS)],
       "host": platform.node(), "cpu_count": os.cpu_count()}
say("env", json.dumps(env))
fixtures = {"GOAE_REQUIRE_FIXTURES": "1"} if (ROOT.parent / "shared" / "parity").is_dir() else {}

with tempfile.TemporaryDirectory(prefix="goae-gpu-check-") as tmp:
    tmp = Path(tmp)
    # 1. CUDA tests: every test whose name says cuda (CUDA vs CPU parity of encoder, AFA, mask, renderer,
    # fast path, training stages); on a CPU they would only skip.
    if CUDA:
        pytest_summary(run("cuda_tests", [sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda", "tests"], 150,
                           env=fixtures))
    else:
        skip("cuda_tests", NO_CUDA)
    # 2. The benchmark's GPU rows; the full-size model (random weights: speed does not depend on them).
    if CUDA:
        size = ["--preset", "small", "--quick", "--repeats", "1", "--warmup", "0", "--mesh", "24"] if args.quick else \
               ["--batch", "1", "4", "--repeats", "3", "--mesh", "128", "256"]
        bench("bench_fp32_bf16", [*size, "--modes", "fp32", "fast", "--precision", "bf16"], 150, "cuda", tmp)
        bench("bench_fp16", [*size, "--modes", "fast", "--precision", "fp16"], 90, "cuda", tmp)
        bench("bench_compile", [*size, "--modes", "fast", "--precision", "auto", "--compile"], 150, "cuda", tmp)
    else:
        for name in ("bench_fp32_bf16", "bench_fp16", "bench_compile"):
            skip(name, NO_CUDA)
        if args.quick:   # the harness end to end on the CPU, small preset: checks this script, not the speed
            bench("bench_cpu_quick", ["--preset", "small", "--quick", "--repeats", "1", "--warmup", "0", "--mesh", "24",
                                      "--modes", "fp32", "--threads", "2"], 240, "cpu", tmp)
    # 3. Two-process training steps (nccl), the tiny config on the example photos.
    examples = Path(os.environ.get("GOAE_EXAMPLES_DIR", ROOT.parent / "shared" / "examples"))
    if GPUS < 2:
        skip("train_ddp_2gpu", NO_CUDA if not CUDA else f"{GPUS} GPU here, two needed")
    elif not (examples / "goae" / "real_person").is_dir():
        skip("train_ddp_2gpu", f"no example photos at {examples} (GOAE_EXAMPLES_DIR)")
    else:
        sys.path.insert(0, str(ROOT / "tests"))
        from tiny import make_eg3d_dataset

        (tmp / "ds").mkdir()
        data = make_eg3d_dataset((tmp / "ds").resolve(), examples, ("1.jpg", "2.jpg", "4.jpg", "5.jpg"))
        run("train_ddp_2gpu", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "train/run.py", "--config", "train/configs/tiny.yaml", "--data", str(data), "--out",
                               str(tmp / "train"), "--stage", "encoder", "--max-steps", "3",
                               "--set", "train.device=cuda", "--set", "log.progress=false"], 90)

device = env["gpus"][0] if GPUS else "cpu"
report = {"what": "benchmarks/gpu_check.sh", "when": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"), "quick": args.quick, "budget_s": args.budget, "env": env, "steps": steps,
          "wall_s": round(time.monotonic() - START, 1)}
slug = "".join(c if c.isalnum() else "-" for c in device.lower()).strip("-")
out = args.out or ROOT / "benchmarks" / "results" / f"gpu_check-{slug}.json"
atomic_write_bytes(out, (json.dumps(report, indent=1) + "\n").encode())
say("done", f"{sum(s['status'] == 'ok' for s in steps.values())} ok, "
    f"{sum(s['status'] == 'skipped' for s in steps.values())} skipped, "
    f"{sum(s['status'] not in ('ok', 'skipped') for s in steps.values())} not ok; wrote {out}")
sys.exit(0 if all(s["status"] in ("ok", "skipped") for s in steps.values()) else 1)
PY
