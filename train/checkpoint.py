"""Training checkpoints: `<run>/checkpoints/step_XXXXXXX.pt` plus a `latest` pointer, written atomically.

A checkpoint holds everything a resumed run needs to continue bit-for-bit where the saved one was:
module and optimiser states, schedulers, the grad scaler, RNG states, the step and the data position.
Only tensors and plain Python types go in, so loading uses `torch.load(weights_only=True)`.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from goae.io import atomic_path, atomic_write_bytes

_NAME = re.compile(r"^step_(\d{7,})\.pt$")


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
    path = folder / f"step_{step:07d}.pt"
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    atomic_write_bytes(folder / "latest", path.name.encode())
    for old in list_checkpoints(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if _NAME.match(p.name)]
    return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))


def find_latest(run_dir: str | Path) -> Path | None:
    """The checkpoint `latest` names, else the highest-numbered one; None when there is none."""
    folder = checkpoint_dir(run_dir)
    pointer = folder / "latest"
    if pointer.is_file():
        target = folder / pointer.read_text().strip()
        if target.is_file():
            return target
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, foreign pickle ...: say which file
        raise CheckpointError(f"cannot load checkpoint {path} (damaged, or not a goae training checkpoint): {e}") from None
