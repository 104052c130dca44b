"""train/memory.py: one training step's peak memory, measured on the small preset (the tool the README's
accumulation table was calibrated with)."""
from __future__ import annotations

import pytest

from train.memory import measure


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["encoder", "afa"])
def test_one_step_is_measured(stage):
    r = measure(stage, images=2, nrr=16, device="cpu", preset="small")
    assert r["stage"] == stage and r["images"] == 2 and r["nrr"] == 16 and r["device"] == "cpu"
    assert r["trained_params_M"] > 0 and r["step_s"] >= 0
    assert r["peak_over_start_GB"] >= r["persistent_growth_GB"] >= 0   # the peak includes what the step keeps
