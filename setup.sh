#!/usr/bin/env bash
# One-command set-up: Python packages, the goae package itself, mediapipe's face landmarker model and the
# fused CPU render kernel.
#   bash setup.sh          # runtime
#   bash setup.sh --dev    # runtime + test tools (used by CI)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY -m pip install -q -r requirements.txt
$PY -m pip install -q --no-deps --no-build-isolation -e .
if [[ "${1:-}" == "--dev" ]]; then
  $PY -m pip install -q -r requirements-dev.txt
  # The reference LPIPS code for the metric tests (tests/test_eval.py). --no-deps: its only other need is
  # torchvision's trunks, which would pull a multi-GB CUDA torch; the test supplies the trunk itself.
  $PY -m pip install -q --no-deps lpips==0.1.4
fi
# face_landmarker.task is not inside the mediapipe wheel; fetch it (sha256-checked) into the user cache.
$PY -m goae.landmarker
# The fused CPU render kernel, built now so that the first render does not wait for it. It is optional:
# without a C++ compiler (or ninja) this says so and goae renders with the PyTorch path (same pictures).
$PY -m goae.models.kernels || true
