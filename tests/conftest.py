import os
from pathlib import Path

import pytest
import torch

from goae.runtime import tf32

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("GOAE_SHARED_DIR", ROOT.parent / "shared"))
PARITY_DIR = Path(os.environ.get("GOAE_PARITY_DIR", SHARED / "parity"))
EXAMPLES_DIR = Path(os.environ.get("GOAE_EXAMPLES_DIR", SHARED / "examples"))


# A contributor's clone without ../shared skips the tests that need its goldens or photos (one reason
# each); CI sets GOAE_REQUIRE_FIXTURES=1 so that a missing fixture folder fails instead of skipping.
REQUIRE_FIXTURES = os.environ.get("GOAE_REQUIRE_FIXTURES", "") not in ("", "0")


def _fixture_dir(path: Path, what: str, variable: str) -> Path:
    if not path.is_dir() or not any(path.iterdir()):  # an empty folder (a placeholder) is as good as none
        msg = f"{what} not found at {path} (the shared/ folder beside the checkout; set {variable})"
        if REQUIRE_FIXTURES:
            pytest.fail(msg + " and GOAE_REQUIRE_FIXTURES=1 forbids skipping")
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    return _fixture_dir(PARITY_DIR, "parity goldens", "GOAE_PARITY_DIR")


@pytest.fixture(scope="session")
def examples_dir() -> Path:
    return _fixture_dir(EXAMPLES_DIR, "example photos", "GOAE_EXAMPLES_DIR")


@pytest.fixture(scope="session")
def repo_examples() -> Path:
    """The photos the repository ships in examples/ (sources in examples/SOURCES.md): astronaut.png, a
    public-domain portrait; chelsea.png, a CC0 cat; coffee.png, a CC0 photo with no face. Tests that need a
    face, a cat or no face, and no label or golden, use these: every checkout has them."""
    return ROOT / "examples"


@pytest.fixture(scope="session")
def landmarker():
    """Path of mediapipe's face_landmarker.task (setup.sh installs it), or a skip that says why."""
    pytest.importorskip("mediapipe")
    from goae.landmarker import LandmarkerModelMissing, find_landmarker

    try:
        return find_landmarker()
    except LandmarkerModelMissing as e:
        pytest.skip(f"mediapipe face_landmarker.task not available ({e})")


@pytest.fixture(autouse=True)
def _fp32_determinism():
    # Parity is defined in fp32 with no TF32; the flags are process-wide, so the ones from before the test
    # come back after it (a test or the code it runs may turn TF32 on).
    with tf32(matmul=False, convolutions=False):
        yield
