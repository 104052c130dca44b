"""Training's held-out evaluation (config `eval`, train.stages.HeldOutEval): metrics in the log beside the losses,
the best checkpoint by the chosen metric, the last evaluation in final/'s model card."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import make_eg3d_dataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `train` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def data(tmp_path_factory, examples_dir) -> Path:
    folder = make_eg3d_dataset(tmp_path_factory.mktemp("ds"), examples_dir, ("1.jpg", "2.jpg", "4.jpg", "5.jpg"))
    labels = json.loads((folder / "dataset.json").read_text())["labels"]
    (folder / "dataset.json").write_text(json.dumps({"labels": labels[:2]}))    # trained on
    (folder / "heldout.json").write_text(json.dumps({"labels": labels[2:]}))    # measured, never trained on
    return folder


def test_tiny_run_logs_evaluation_and_keeps_best(data, tmp_path):
    from train.checkpoint import load_checkpoint

    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "train" / "run.py"), "--config", str(ROOT / "train" / "configs" / "tiny.yaml"),
           "--data", str(data), "--out", str(out), "--stage", "encoder", "--max-steps", "4",
           "--set", "log.every=1", "--set", "log.ckpt_every=4", "--set", "eval.labels=heldout.json",
           "--set", "eval.every=2", "--set", "eval.networks=random", "--set", "eval.best=lpips",
           "--set", "eval.resolution=64"]
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    evals = {r["step"]: r for r in log if "eval_lpips" in r}
    assert sorted(evals) == [2, 4]
    for r in evals.values():  # beside the losses, in the same line
        assert {"loss", "l2", "eval_mse", "eval_ssim", "eval_lpips", "eval_id"} <= set(r)
        assert 0 < r["eval_mse"] and -1 <= r["eval_ssim"] <= 1 and -1 <= r["eval_id"] <= 1
    assert not any("eval_mse" in r for r in log if r["step"] in (1, 3))
    best = json.loads((out / "checkpoints" / "best.json").read_text())
    low = min(evals, key=lambda s: evals[s]["eval_lpips"])
    assert best["metric"] == "lpips" and best["step"] == low and best["images"] == 2
    assert best["value"] == pytest.approx(evals[low]["eval_lpips"], rel=1e-12)
    assert load_checkpoint(out / "checkpoints" / "best.pt")["step"] == low
    card = (out / "final" / "README.md").read_text()
    assert "## Evaluation" in card and "step 4, 2 images (heldout.json)" in card
    assert f"| lpips | {evals[4]['eval_lpips']:.4f} |" in card and "random weights" in card


def test_a_nan_evaluation_does_not_pick_best(data, tmp_path):
    # A held-out mean is over the finite values only (goae.eval.finite_mean): before, a plain sum made one NaN
    # image a NaN mean, best.json kept NaN as the best value, and no later evaluation could beat it.
    import math

    import torch

    from train.checkpoint import load_checkpoint, read_best
    from train.stages import HeldOutEval

    cfg = {"seed": 0, "data": {"path": str(data)},
           "eval": {"labels": "heldout.json", "networks": "random", "best": "lpips", "resolution": 64}}
    held = HeldOutEval(cfg, torch.device("cpu"))
    run = tmp_path / "run"

    def keep(step, lpips):
        logged = held.record(step, {"lpips": lpips, "mse": [0.5, 0.5]})
        return logged, held.keep_best(run, lambda: {"step": step})

    logged, kept = keep(1, [math.nan, math.nan])  # a diverged step: no lpips mean at all
    assert not kept and read_best(run) is None and "eval_lpips" not in logged and logged["eval_mse"] == 0.5
    logged, kept = keep(2, [0.4, 0.2])
    assert kept and logged["eval_lpips"] == pytest.approx(0.3) and read_best(run)["step"] == 2
    logged, kept = keep(3, [math.inf, 0.1])  # the finite image counts, the other is left out
    assert kept and logged["eval_lpips"] == pytest.approx(0.1)
    assert read_best(run)["value"] == pytest.approx(0.1) and load_checkpoint(run / "checkpoints" / "best.pt")["step"] == 3
    logged, kept = keep(4, [0.2, 0.2])  # worse: best.pt stays
    assert not kept and read_best(run)["step"] == 3
