"""train/memory.py: one training step's peak memory, measured on the small preset (the tool the README's
accumulation table was calibrated with). Each size runs in its own process, as the tool's users run it: a
CPU peak is a resident-set figure of the whole process."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["encoder", "afa"])
def test_one_step_is_measured(stage):
    out = subprocess.run([sys.executable, str(ROOT / "train" / "memory.py"), "--stage", stage, "--images", "2",
                          "--nrr", "16", "--device", "cpu", "--preset", "small"],
                         capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["stage"] == stage and r["images"] == 2 and r["nrr"] == 16 and r["device"] == "cpu"
    assert r["trained_params_M"] > 0 and r["step_s"] >= 0
    # the peak is a high-water mark, so it holds whatever the process kept after the step
    assert r["peak_over_start_GB"] >= r["persistent_growth_GB"]
    # gradients and optimiser state, counted from the tensors (not by RSS): at least a gradient per parameter
    assert r["state_GB"] >= 4 * r["trained_params_M"] * 1e6 / 1e9 * 0.95 > 0
