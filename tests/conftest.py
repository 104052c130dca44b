import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOAE_SHARED_DIR", ROOT.parent / "shared"))
PARITY_DIR = Path(os.environ.get("GOAE_PARITY_DIR", SHARED / "parity"))
EXAMPLES_DIR = Path(os.environ.get("GOAE_EXAMPLES_DIR", SHARED / "examples"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    if not PARITY_DIR.is_dir():
        pytest.fail(f"golden folder {PARITY_DIR} not found (set GOAE_PARITY_DIR)")
    return PARITY_DIR


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    if not EXAMPLES_DIR.is_dir():
        pytest.fail(f"examples folder {EXAMPLES_DIR} not found (set GOAE_EXAMPLES_DIR)")
    return EXAMPLES_DIR


@pytest.fixture(autouse=True)
def _fp32_determinism():
    # Parity is defined in fp32 with no TF32 and a fixed thread count.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
