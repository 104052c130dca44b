#!/usr/bin/env bash
# One-command set-up: Python packages, the goae package itself, and mediapipe's face landmarker model.
#   bash setup.sh          # runtime
#   bash setup.sh --dev    # runtime + test tools (used by CI)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY -m pip install -q -r requirements.txt
$PY -m pip install -q --no-deps --no-build-isolation -e .
if [[ "${1:-}" == "--dev" ]]; then
  $PY -m pip install -q -r requirements-dev.txt
fi
# face_landmarker.task is not inside the mediapipe wheel; fetch it (sha256-checked) into the user cache.
$PY -m goae.landmarker
