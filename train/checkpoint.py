"""Training checkpoints: `<run>/checkpoints/step_XXXXXXX.pt` plus a `latest` pointer, written atomically.

A checkpoint holds everything a resumed run needs to continue bit-for-bit where the saved one was:
module and optimiser states, schedulers, the grad scaler, RNG states, the step and the data position.
Only tensors and plain Python types go in, so loading uses `torch.load(weights_only=True)`.

The best checkpoint by the held-out evaluation (train.stages.HeldOutEval) is `checkpoints/best.pt`, a full
training state like the others, with `best.json` (step, metric, value, all the metrics) beside it; it is never
rotated away and never resumed from.

Recovery: `latest` may only name a checkpoint file of the folder; a checkpoint that does not load is
skipped (with a warning) for the one before it; temporary files that a killed write left behind
(`.<name>.tmp-*`, goae.io's naming) are removed when a run starts.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import torch

from goae.io import atomic_path, atomic_write_bytes

_NAME = re.compile(r"^step_(\d{7,})\.pt$")
_TEMP = re.compile(r"^\..+\.(tmp|old)-[a-z0-9_]{8}(\.[A-Za-z0-9]+)?$")  # goae.io's temporaries (mkstemp/mkdtemp)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or does not belong to this run."""


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def save_checkpoint(run_dir: str | Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write step_XXXXXXX.pt atomically, point `latest` at it, and keep only the newest `keep`."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = _write_state(folder / f"step_{step:07d}.pt", state)
    atomic_write_bytes(folder / "latest", path.name.encode())
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


BEST, BEST_RECORD = "best.pt", "best.json"


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    """best.json of the run (step, metric, value, metrics), or None when there is none or it does not parse."""
    try:
        rec = json.loads((checkpoint_dir(run_dir) / BEST_RECORD).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and isinstance(rec.get("value"), (int, float)) else None


def save_best(run_dir: str | Path, state: dict[str, Any], record: dict[str, Any]) -> Path:
    """Write best.pt (the training state) and then best.json (what made it best), each atomically."""
    folder = checkpoint_dir(run_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = _write_state(folder / BEST, state)
    atomic_write_bytes(folder / BEST_RECORD, json.dumps(record, indent=1).encode())
    return path


def _write_state(path: Path, state: dict[str, Any]) -> Path:
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)  # through a Python file, so that a full disk is an OSError (ENOSPC) ...
            f.flush()
            os.fsync(f.fileno())
    except RuntimeError as e:  # ... which torch's zip writer then buries under its own error
        if isinstance(e.__context__, OSError):
            raise e.__context__ from None
        raise
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, else the highest-numbered one; None when there is none."""
    found = candidates(run_dir)
    return found[0] if found else None


def candidates(run_dir: str | Path) -> list[Path]:
    """Checkpoints to resume from, best first: the one `latest` names, then the others, newest first.
    `latest` must hold a bare checkpoint file name (step_XXXXXXX.pt); anything else is ignored."""
    folder = checkpoint_dir(run_dir)
    found = list_checkpoints(run_dir)[::-1]
    pointer = folder / "latest"
    if pointer.is_file():
        with open(pointer, "rb") as f:
            name = f.read(64).decode("utf-8", "replace").strip()
        if _NAME.match(name) and (folder / name) in found:
            found.remove(folder / name)
            found.insert(0, folder / name)
        elif _NAME.match(name) is None:
            warn(f"ignoring {pointer}: it must name a checkpoint file of its folder (step_XXXXXXX.pt), not {name[:40]!r}")
    return found


def load_latest(run_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the newest checkpoint that loads; a damaged one is skipped with a warning, for the
    one before it. None when the run has no checkpoint; CheckpointError when none of them loads."""
    errors = []
    for path in candidates(run_dir):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            errors.append(str(e))
            warn(f"{e}; trying the checkpoint before it")
            continue
        if errors:
            warn(f"resuming from {path.name}, an older checkpoint: the steps after it are trained again")
        return path, state
    if errors:
        raise CheckpointError(f"no checkpoint of {checkpoint_dir(run_dir)} can be loaded (last error: {errors[-1]}); "
                              f"remove the folder to start again")
    return None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():  # a FIFO would block the read forever, a device never end
        raise CheckpointError(f"checkpoint {path} is not a regular file (a FIFO, socket or device)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle ...: say which file
        raise CheckpointError(f"cannot load checkpoint {path} (damaged, or not a goae training checkpoint): "
                              f"{str(e)[:200]}") from None
    if not (isinstance(state, dict) and isinstance(state.get("step"), int)):
        raise CheckpointError(f"checkpoint {path} is not a goae training checkpoint (no step)")
    return state


def remove_stale_temps(*folders: str | Path) -> tuple[int, int]:
    """Delete the temporaries of interrupted atomic writes in `folders` (not recursive) -> (count, bytes)."""
    count = size = 0
    for folder in folders:
        if not Path(folder).is_dir():
            continue
        for p in Path(folder).iterdir():
            if not _TEMP.match(p.name):
                continue
            st = p.lstat()
            if stat.S_ISDIR(st.st_mode):
                size += sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
                shutil.rmtree(p, ignore_errors=True)
            else:
                size += st.st_size
                p.unlink(missing_ok=True)
            count += 1
    return count, size


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)
