"""Training data: real portraits in EG3D's dataset layout, and synthetic samples of the frozen generator.

Real data = an image folder plus `dataset.json` as EG3D's FFHQ preparation writes it:
    {"labels": [["00000/img00000000.png", [25 floats: cam2world 4x4, intrinsics 3x3]], ...]}
(the GOAE examples name the same file `label.json`; pass `labels=`).

Determinism. Samples are drawn from an endless stream: epoch e is a permutation seeded by (seed, e).
Optimiser step s reads stream positions [p, p + batch) where p, the data position, is saved in
checkpoints; rank r of W takes its slice of that global batch. So the same global batch is read
whatever the number of processes, and a resumed run continues exactly where it stopped. Synthetic
samples are seeded per (seed, step, global sample index), so they are world-size independent too.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

FLIP_ENTRIES = [1, 2, 3, 4, 8]  # cam2world entries that change sign under a horizontal mirror (EG3D)


class DatasetError(ValueError):
    """Missing folder / labels / image, bad label shape, unreadable image: the message names the file."""


def _mix(*values: int) -> int:
    """Combine integers into one 63-bit seed (stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


class EG3DDataset:
    """Images + 25-number camera labels of an EG3D dataset folder. With `xflip`, item i >= N is
    image i - N mirrored (its camera mirrored too), as EG3D and GOAE augment."""

    def __init__(self, path: str | Path, labels: str = "dataset.json", resolution: int = 512, xflip: bool = False):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist (expected an image folder with {labels})")
        label_path = Path(labels) if Path(labels).is_absolute() else self.root / labels
        if not label_path.is_file():
            raise DatasetError(f"camera labels {label_path} not found: an EG3D dataset folder holds its images and a "
                               f"dataset.json ({{\"labels\": [[relpath, [25 floats]], ...]}}); name another file with --labels")
        try:
            entries = json.loads(label_path.read_text())["labels"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise DatasetError(f"{label_path} is not an EG3D labels file ({{\"labels\": [[relpath, [25 floats]], ...]}}): {e}") from None
        if isinstance(entries, dict):  # some tools write {name: label}
            entries = list(entries.items())
        if not entries:
            raise DatasetError(f"{label_path} lists no images")
        self.files, cams = [], []
        for i, entry in enumerate(entries):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2):
                raise DatasetError(f"{label_path}: entry {i} must be [relpath, [25 floats]], got {str(entry)[:80]}")
            name, label = entry
            arr = np.asarray(label, dtype=np.float32) if label is not None else None
            if arr is None or arr.shape != (25,) or not np.isfinite(arr).all():
                raise DatasetError(f"{label_path}: the label of {name!r} must be 25 finite numbers (cam2world 4x4 + "
                                   f"intrinsics 3x3), got shape {None if arr is None else arr.shape}")
            if not (self.root / name).is_file():
                raise DatasetError(f"image {self.root / name} listed in {label_path} does not exist")
            self.files.append(name)
            cams.append(arr)
        self.cameras = torch.from_numpy(np.stack(cams))
        self.resolution, self.xflip = resolution, xflip

    @property
    def num_images(self) -> int:
        return len(self.files)

    def __len__(self) -> int:
        return self.num_images * (2 if self.xflip else 1)

    def load(self, index: int, enc_resolution: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> (x [3,R,R] uint8, x_enc [3,r,r] uint8 (PIL bicubic, as GOAEPipeline.preprocess), camera [25])."""
        flip = index >= self.num_images
        i = index - self.num_images if flip else index
        path = self.root / self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"cannot read image {path}: {e}") from None
        if im.size[0] != im.size[1]:
            raise DatasetError(f"image {path} is {im.size[0]}x{im.size[1]}; EG3D crops are square")
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if im.size[0] != self.resolution:
            im = im.resize((self.resolution, self.resolution), Image.LANCZOS)
        to_t = lambda a: torch.from_numpy(np.asarray(a).copy()).permute(2, 0, 1)
        c = self.cameras[i].clone()
        if flip:
            c[FLIP_ENTRIES] *= -1
        return to_t(im), to_t(im.resize((enc_resolution, enc_resolution), Image.BICUBIC)), c


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_mix(seed, epoch, 0xDA7A))
    return torch.randperm(n, generator=g)


def stream_indices(n: int, seed: int, position: int, count: int) -> list[int]:
    """Dataset items at stream positions [position, position + count)."""
    out, cache = [], {}
    for p in range(position, position + count):
        epoch, k = divmod(p, n)
        if epoch not in cache:
            cache[epoch] = epoch_order(n, seed, epoch)
        out.append(int(cache[epoch][k]))
    return out


def rank_slice(count: int, rank: int, world: int, micro: int, accum: int) -> slice:
    """This rank's part of micro-step `micro` of a global batch of `count` (count % (world*accum) == 0)."""
    per = count // (world * accum)
    start = (micro * world + rank) * per
    return slice(start, start + per)


def load_batch(dataset: EG3DDataset, indices: list[int], enc_resolution: int, device) -> dict[str, torch.Tensor]:
    """Images in [-1, 1] (`uint8 / 127.5 - 1`, the pipeline's normalisation) and cameras."""
    xs, encs, cs = zip(*(dataset.load(i, enc_resolution) for i in indices))
    f = lambda t: torch.stack(t).float().div(127.5).sub(1).to(device)
    return {"x": f(xs), "x_enc": f(encs), "c": torch.stack(cs).to(device)}


def synthetic_codes(seed: int, step: int, indices: range, z_dim: int, max_yaw: float, max_pitch: float):
    """z [n, z_dim], yaw [n], pitch [n] of synthetic samples, each from its own (seed, step, index) generator."""
    zs, yaw, pitch = [], [], []
    for i in indices:
        g = torch.Generator().manual_seed(_mix(seed, step, i, 0x5EED))
        zs.append(torch.randn(z_dim, generator=g))
        u = torch.rand(2, generator=g) * 2 - 1
        yaw.append(float(u[0]) * max_yaw)
        pitch.append(float(u[1]) * max_pitch)
    return torch.stack(zs), torch.tensor(yaw), torch.tensor(pitch)


def step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    """A CPU generator for per-step randomness shared by all ranks (e.g. the mix blur sigma)."""
    return torch.Generator().manual_seed(_mix(seed, step, salt))

