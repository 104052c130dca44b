"""Training data: real photos in EG3D's dataset layout, and synthetic samples of the frozen generator.

Real data = an image folder plus `dataset.json` as EG3D's FFHQ and AFHQ preparations write it:
    {"labels": [["00000/img00000000.png", [25 floats: cam2world 4x4, intrinsics 3x3]], ...]}
(the GOAE examples name the same file `label.json`; pass `labels=`). The format is the same for every
domain; only where the cameras look differs, and nothing here depends on it: FFHQ labels look at about
EG3D's pivot (0, 0, 0.2), AFHQv2 cat labels sit at translation = -2.7 * forward (they look at the
origin; goae.domains.CAT.label_lookat). Estimated FFHQ poses pass close to the origin as well (the GOAE
example labels: 0.01 to 0.16 from it), so the look-at point cannot tell the two apart and is not checked. EG3D's AFHQ folder
is already mirrored (`x_mirror.png` beside each `x.png`, the camera with entries FLIP_ENTRIES negated):
train it with data.xflip false, or every photo is seen twice per epoch.

Determinism. Samples are drawn from an endless stream: epoch e is a permutation seeded by (seed, e).
Optimiser step s reads stream positions [p, p + batch) where p, the data position, is saved in
checkpoints; rank r of W takes its slice of that global batch. So the same global batch is read
whatever the number of processes, and a resumed run continues exactly where it stopped. Synthetic
samples are seeded per (seed, step, global sample index), so they are world-size independent too.
`StepBatches` is that stream for one rank, fed to a torch DataLoader whose workers decode the images.

Images are decoded by `goae.align.load_image` (the pipeline's reader: 16-bit and palette PNGs, EXIF,
size limits), so training sees the pixels inference would see.

The dataset is checked up front, from the labels and the image headers only (no pixel is decoded): every
name must stay inside the folder (no absolute paths, no `..`; a symlink placed in the folder is followed),
every image must be a photo format goae reads, in a pixel mode it converts to RGB, square, at least
MIN_SIZE px, and, once the training resolution is set, at least that large (a smaller one would be
upscaled: blurred targets). One DatasetError lists the bad items; nothing is skipped, because a silently
smaller dataset would change the run's order and a resume would meet a different one.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from goae.align import AlignError, load_image
from goae.align.image import MAX_PIXELS, readable_formats
from goae.io import one_line

FLIP_ENTRIES = [1, 2, 3, 4, 8]  # cam2world entries that change sign under a horizontal mirror (EG3D, FFHQ and AFHQ)
MIN_SIZE = 64  # px: below this an image is no face crop, whatever the resolution
# Pillow modes that goae.align.load_image turns into RGB.
RGB_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV",
                       "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
_SHOWN = 10  # bad items named in the error


class DatasetError(ValueError):
    """Missing folder / labels / image, bad label shape, unreadable image: the message names the file."""


def _mix(*values: int) -> int:
    """Combine integers into one 63-bit seed (stable across runs and platforms)."""
    h = 0x9E3779B97F4A7C15
    for v in values:
        h = (h ^ (int(v) & 0xFFFFFFFFFFFFFFFF)) * 0xBF58476D1CE4E5B9 & 0xFFFFFFFFFFFFFFFF
        h ^= h >> 31
    return h & 0x7FFFFFFFFFFFFFFF


def _outside(name: str) -> bool:
    """Whether a label's file name leaves the dataset folder (absolute, a drive, `..`), on any system."""
    from pathlib import PurePosixPath, PureWindowsPath

    win = PureWindowsPath(name)
    return (not name or "\0" in name or PurePosixPath(name).is_absolute() or win.is_absolute() or bool(win.drive)
            or ".." in PurePosixPath(name).parts or ".." in win.parts)


def _header(path: Path) -> tuple[int, int] | str:
    """(width, height) from the image's header, or what is wrong with it (nothing is decoded)."""
    try:
        with Image.open(path, formats=readable_formats()) as im:
            size, mode = im.size, im.mode
    except Image.UnidentifiedImageError:
        return f"cannot read image {path}: not an image file goae can read ({', '.join(readable_formats())})"
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        return f"cannot read image {path}: {one_line(e)}"
    w, h = size
    if w != h:
        return f"image {path} is {w}x{h}; EG3D crops are square"
    if w < MIN_SIZE:
        return f"image {path} is {w}x{h}, smaller than {MIN_SIZE}x{MIN_SIZE}"
    if w * h > MAX_PIXELS:
        return f"image {path} is {w}x{h}, more than goae's {MAX_PIXELS // 10**6} MP limit"
    if mode not in RGB_MODES:
        return f"image {path} has the pixel mode {mode!r}, which goae does not read as RGB"
    return size


def _refuse(problems: list[str], total: int, label_path: Path, what: str = "cannot be used") -> DatasetError:
    if len(problems) == 1:
        return DatasetError(problems[0])
    more = f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    return DatasetError(f"{len(problems)} of the {total} images listed in {label_path} {what}: "
                        f"{'; '.join(problems[:_SHOWN])}{more}. Fix them or remove them from the labels")


class EG3DDataset:
    """Images + 25-number camera labels of an EG3D dataset folder. With `xflip`, item i >= N is
    image i - N mirrored (its camera mirrored too), as EG3D and GOAE augment.

    resolution: the training resolution (images are resized to it); None until the trainer sets it to the
    generator's. Every image is checked when the dataset is made, and against the resolution when it is set."""

    def __init__(self, path: str | Path, labels: str = "dataset.json", resolution: int | None = None, xflip: bool = False):
        self.root = Path(path)
        if not self.root.is_dir():
            raise DatasetError(f"dataset folder {self.root} does not exist (expected an image folder with {labels})")
        label_path = Path(labels) if Path(labels).is_absolute() else self.root / labels
        if not label_path.is_file():
            raise DatasetError(f"camera labels {label_path} not found: an EG3D dataset folder holds its images and a "
                               f"dataset.json ({{\"labels\": [[relpath, [25 floats]], ...]}}); name another file with --labels")
        try:
            entries = json.loads(label_path.read_text())["labels"]
        except (ValueError, KeyError, TypeError) as e:  # ValueError: bad JSON or not UTF-8
            raise DatasetError(f"{label_path} is not an EG3D labels file ({{\"labels\": [[relpath, [25 floats]], ...]}}): {e}") from None
        if isinstance(entries, dict):  # some tools write {name: label}
            entries = list(entries.items())
        if not isinstance(entries, list) or not entries:
            raise DatasetError(f"{label_path}: \"labels\" must be a non-empty list of [relpath, [25 floats]], "
                               f"got {str(entries)[:80]}")
        self.files, self.sizes, cams, problems = [], [], [], []
        self.label_path = label_path
        for i, entry in enumerate(entries):
            if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
                raise DatasetError(f"{label_path}: entry {i} must be [relpath, [25 floats]], got {str(entry)[:80]}")
            name, label = entry
            numbers = isinstance(label, (list, tuple)) and all(type(v) in (int, float) for v in label)
            try:  # not a dict, strings, nested lists or booleans
                arr = np.asarray(label, dtype=np.float32) if numbers else None
            except OverflowError:
                arr = None
            if arr is None or arr.shape != (25,) or not np.isfinite(arr).all():
                raise DatasetError(f"{label_path}: the label of {name!r} must be 25 finite numbers (a list: cam2world "
                                   f"4x4 + intrinsics 3x3), got {str(label)[:80]}")
            size = None
            if _outside(name):
                problems.append(f"{name!r} is outside the dataset folder (labels name files inside it, e.g. 00000/img00000000.png)")
            elif not (self.root / name).is_file():
                problems.append(f"image {self.root / name} listed in {label_path} does not exist")
            elif isinstance(size := _header(self.root / name), str):
                problems.append(size)
            self.files.append(name)
            self.sizes.append(size[0] if isinstance(size, tuple) else 0)  # each image's side, from its header
            cams.append(arr)
        if problems:
            raise _refuse(problems, len(entries), label_path)
        self.cameras = torch.from_numpy(np.stack(cams))
        self.xflip = xflip
        self._resolution: int | None = None
        self.resolution = resolution
        self.enc_resolution = 256  # what __getitem__ (the DataLoader) gives x_enc at; the trainer sets the encoder's

    @property
    def resolution(self) -> int | None:
        return self._resolution

    @resolution.setter
    def resolution(self, value: int | None) -> None:
        """Set the training resolution; images smaller than it are refused (they would be upscaled)."""
        if value is not None:
            small = [f"image {self.root / n} is {s}x{s}" for n, s in zip(self.files, self.sizes) if s < value]
            if small:
                raise _refuse(small, len(self.files), self.label_path,
                              f"are smaller than the training resolution {value}x{value} and would be upscaled "
                              "(blurred targets); use crops made at that size")
        self._resolution = value

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
            im = load_image(path)  # 8-bit RGB whatever the file's bit depth / mode
        except AlignError as e:
            raise DatasetError(f"cannot read image {path}: {e}") from None
        if self.resolution is None:
            raise DatasetError("set the dataset's training resolution (dataset.resolution) before loading images")
        if im.size[0] != im.size[1] or im.size[0] < self.resolution:  # checked up front; the file changed since
            raise DatasetError(f"image {path} is {im.size[0]}x{im.size[1]}; EG3D crops are square and at least "
                               f"{self.resolution}x{self.resolution}")
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        if im.size[0] != self.resolution:
            im = im.resize((self.resolution, self.resolution), Image.LANCZOS)
        to_t = lambda a: torch.from_numpy(np.asarray(a).copy()).permute(2, 0, 1)
        c = self.cameras[i].clone()
        if flip:
            c[FLIP_ENTRIES] *= -1
        return to_t(im), to_t(im.resize((enc_resolution, enc_resolution), Image.BICUBIC)), c

    def __getitem__(self, index: int):
        try:
            return self.load(index, self.enc_resolution)
        except DatasetError as e:  # raised by collate in the main process: a worker's re-raise buries the message
            return e


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


class StepBatches(torch.utils.data.Sampler):
    """This rank's micro-batches, optimiser step after step from data position `position`: the item lists
    `stream_indices(...)[rank_slice(...)]` the loop would read, as a DataLoader batch_sampler."""

    def __init__(self, n: int, seed: int, position: int, batch_size: int, rank: int, world: int, accum: int, steps: int):
        self.n, self.seed, self.position, self.batch_size, self.steps = n, seed, position, batch_size, steps
        self.parts = [rank_slice(batch_size, rank, world, m, accum) for m in range(accum)]

    def __len__(self) -> int:
        return self.steps * len(self.parts)

    def __iter__(self):
        for step in range(self.steps):
            items = stream_indices(self.n, self.seed, self.position + step * self.batch_size, self.batch_size)
            for part in self.parts:
                yield items[part]


def collate(samples: list):
    """uint8 images, uint8 encoder inputs and cameras, stacked; or the DatasetError of a sample (raised by the
    main process: a worker's own re-raise buries the message in a traceback)."""
    for s in samples:
        if isinstance(s, DatasetError):
            return s
    return tuple(torch.stack(t) for t in zip(*samples))


def micro_batches(dataset: EG3DDataset, order: StepBatches, workers: int, pin_memory: bool):
    """-> (x uint8, x_enc uint8, c float32) CPU tensors in `order`; `workers` processes decode ahead of the step."""
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=order, num_workers=workers, collate_fn=collate,
                                         pin_memory=pin_memory, generator=torch.Generator().manual_seed(0))
    for batch in loader:
        if isinstance(batch, DatasetError):
            raise batch
        yield batch


def to_device(x: torch.Tensor, x_enc: torch.Tensor, c: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """Images in [-1, 1] (`uint8 / 127.5 - 1`, the pipeline's normalisation) and cameras, on `device`."""
    f = lambda t: t.to(device, non_blocking=True).float().div(127.5).sub(1)
    return {"x": f(x), "x_enc": f(x_enc), "c": c.to(device, non_blocking=True)}


def load_batch(dataset: EG3DDataset, indices: list[int], enc_resolution: int, device) -> dict[str, torch.Tensor]:
    """The given items, read in this process (sample grids)."""
    x, x_enc, c = collate([dataset.load(i, enc_resolution) for i in indices])
    return to_device(x, x_enc, c, device)


def synthetic_codes(seed: int, step: int, indices: range, z_dim: int, max_yaw: float, max_pitch: float):
    """z [n, z_dim], yaw [n], pitch [n] of synthetic samples, each from its own (seed, step, index) generator."""
    zs, us = [], []
    for i in indices:
        g = torch.Generator().manual_seed(_mix(seed, step, i, 0x5EED))
        zs.append(torch.randn(z_dim, generator=g))
        us.append(torch.rand(2, generator=g) * 2 - 1)
    u = torch.stack(us).double()  # products in float64, then float32: as Python floats would give
    return torch.stack(zs), (u[:, 0] * max_yaw).float(), (u[:, 1] * max_pitch).float()


def step_generator(seed: int, step: int, salt: int) -> torch.Generator:
    """A CPU generator for per-step randomness shared by all ranks (e.g. the mix blur sigma)."""
    return torch.Generator().manual_seed(_mix(seed, step, salt))

