"""train/data.py: the DataLoader keeps the deterministic per-step, per-rank order; images are decoded as
the pipeline decodes them (16-bit PNGs); malformed labels and unreadable images are one clear DatasetError."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from tiny import make_eg3d_dataset
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `train` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))

from train import data as D  # noqa: E402

PHOTOS = ("1.jpg", "2.jpg", "4.jpg", "5.jpg")


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, examples_dir) -> Path:
    return make_eg3d_dataset(tmp_path_factory.mktemp("ds"), examples_dir, PHOTOS)


def old_order(n, seed, position, batch, rank, world, accum, steps):
    """The loop's order before the DataLoader: per step the global batch, per micro-step this rank's slice."""
    out = []
    for _ in range(steps):
        items = D.stream_indices(n, seed, position, batch)
        out += [items[D.rank_slice(batch, rank, world, m, accum)] for m in range(accum)]
        position += batch
    return out


@pytest.mark.parametrize("world,accum", [(1, 1), (2, 1), (2, 2)])
def test_step_batches_are_the_stream(world, accum):
    n, seed, batch, steps = 6, 3, 4, 7  # 7 steps of 4 cross several epochs of 6
    for rank in range(world):
        got = list(D.StepBatches(n, seed, 0, batch, rank, world, accum, steps))
        assert got == old_order(n, seed, 0, batch, rank, world, accum, steps)
        # resumed at step 3: the same lists as steps 3.. of the uninterrupted run
        assert list(D.StepBatches(n, seed, 3 * batch, batch, rank, world, accum, 4)) == got[3 * accum:]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_gives_the_batches_in_order(dataset_dir, workers):
    ds = D.EG3DDataset(dataset_dir, xflip=True)  # 8 items, mirrored ones included
    ds.resolution, ds.enc_resolution = 64, 32
    order = D.StepBatches(len(ds), 0, 2, 2, 0, 1, 1, 6)
    batches = [D.to_device(*b, "cpu") for b in D.micro_batches(ds, order, workers, pin_memory=False)]
    assert len(batches) == 6
    for items, got in zip(order, batches):
        want = D.load_batch(ds, items, 32, "cpu")
        assert all(torch.equal(got[k], want[k]) for k in ("x", "x_enc", "c"))
        assert got["x"].shape == (2, 3, 64, 64) and got["x"].dtype == torch.float32


def test_worker_error_is_one_clear_line(tmp_path):
    # Damaged after the up-front check (headers are checked, pixels are decoded when loaded).
    Image.new("RGB", (64, 64)).save(tmp_path / "a.png")
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["a.png", [0.0] * 25]]}))
    ds = D.EG3DDataset(tmp_path, resolution=64)
    (tmp_path / "a.png").write_bytes((tmp_path / "a.png").read_bytes()[:60])
    with pytest.raises(D.DatasetError) as e:
        next(D.micro_batches(ds, D.StepBatches(1, 0, 0, 1, 0, 1, 1, 1), 1, pin_memory=False))
    assert str(e.value).startswith(f"cannot read image {tmp_path / 'a.png'}") and "\n" not in str(e.value)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    """A 16-bit grey PNG (Pillow mode I;16) used to become almost white (convert('RGB') clips at 255)."""
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 65536, size=(64, 64), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")  # really a 16-bit file
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": [["g16.png", [0.0] * 25]]}))
    ds = D.EG3DDataset(tmp_path, resolution=64)
    x, _, _ = ds.load(0, 32)
    want = np.round(grey / 257.0)
    assert x.shape == (3, 64, 64) and x.dtype == torch.uint8
    assert np.abs(x[0].numpy().astype(float) - want).max() <= 1, f"mean {x.float().mean():.2f}, expected {want.mean():.2f}"
    assert torch.equal(x[0], x[1]) and torch.equal(x[0], x[2])


@pytest.mark.parametrize("labels,message", [
    ({"labels": [["a.png", {"cam2world": [0.0] * 16, "intrinsics": [0.0] * 9}]]}, "'a.png' must be 25 finite numbers"),
    ({"labels": [["a.png", ["0"] * 25]]}, "'a.png' must be 25 finite numbers"),
    ({"labels": [["a.png", "1 2 3"]]}, "'a.png' must be 25 finite numbers"),
    ({"labels": [["a.png", [[0.0] * 16, [0.0] * 9]]]}, "'a.png' must be 25 finite numbers"),
    ({"labels": [["a.png", [None] * 25]]}, "'a.png' must be 25 finite numbers"),
    ({"labels": [["a.png", [10 ** 400] * 25]]}, "'a.png' must be 25 finite numbers"),
    ({"labels": {"a.png": {"pose": 1}}}, "'a.png' must be 25 finite numbers"),
    ({"labels": [[7, [0.0] * 25]]}, "entry 0 must be"),
    ({"labels": 5}, "must be a non-empty list"),
    ({"labels": "a.png"}, "must be a non-empty list"),
    ([["a.png", [0.0] * 25]], "is not an EG3D labels file"),
])
def test_malformed_labels_are_one_clear_error(tmp_path, labels, message):
    (tmp_path / "a.png").write_bytes(b"")
    (tmp_path / "dataset.json").write_text(json.dumps(labels))
    with pytest.raises(D.DatasetError, match=message) as e:
        D.EG3DDataset(tmp_path)
    assert "\n" not in str(e.value)


def test_labels_not_utf8(tmp_path):
    (tmp_path / "dataset.json").write_bytes(b'{"labels": [["\xff.png", []]]}')
    with pytest.raises(D.DatasetError, match="is not an EG3D labels file"):
        D.EG3DDataset(tmp_path)


def test_workers_setting():
    from train.config import ConfigError, load_config

    tiny = ROOT / "train" / "configs" / "tiny.yaml"
    assert load_config(tiny)["data"]["workers"] == 1 and load_config(tiny, ["data.workers=0"])["data"]["workers"] == 0
    with pytest.raises(ConfigError, match="data.workers must be an integer >= 0"):
        load_config(tiny, ["data.workers=-1"])


def _labelled(folder: Path, names) -> None:
    (folder / "dataset.json").write_text(json.dumps({"labels": [[n, [0.0] * 25] for n in names]}))


def test_dataset_is_checked_up_front(tmp_path):
    """Bad images used to stop a run when a step first loaded them (a non-square one at step 3, again on
    --resume); a 1x1 image was upscaled silently; labels could name files outside the folder."""
    ds = tmp_path / "ds"
    (ds / "00000").mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(ds / "00000" / "ok.png")
    Image.new("RGB", (80, 64)).save(ds / "00000" / "wide.png")
    Image.new("RGB", (1, 1)).save(ds / "00000" / "dot.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "outside.png")
    (ds / "00000" / "text.png").write_text("not an image")
    names = ["00000/ok.png", "00000/wide.png", "00000/dot.png", "../outside.png", str(tmp_path / "outside.png"),
             "00000/../../outside.png", "C:/outside.png", "00000/gone.png", "00000/text.png"]
    _labelled(ds, names)
    with pytest.raises(D.DatasetError) as e:
        D.EG3DDataset(ds)
    msg = str(e.value)
    assert msg.startswith(f"8 of the 9 images listed in {ds / 'dataset.json'} cannot be used: ") and "\n" not in msg
    for part in (f"image {ds / '00000' / 'wide.png'} is 80x64; EG3D crops are square",
                 f"image {ds / '00000' / 'dot.png'} is 1x1, smaller than 64x64",
                 "'../outside.png' is outside the dataset folder", f"{str(tmp_path / 'outside.png')!r} is outside",
                 "'00000/../../outside.png' is outside", "'C:/outside.png' is outside",
                 f"image {ds / '00000' / 'gone.png'} listed in", f"cannot read image {ds / '00000' / 'text.png'}: not an image"):
        assert part in msg, part
    assert "ok.png" not in msg and msg.endswith("Fix them or remove them from the labels")
    # Only the good one left: fine; a symlink placed in the folder is the dataset's own choice and is followed.
    (ds / "00000" / "link.png").symlink_to(tmp_path / "outside.png")
    _labelled(ds, ["00000/ok.png", "00000/link.png"])
    assert D.EG3DDataset(ds).num_images == 2


def test_images_smaller_than_the_resolution_are_refused(tmp_path):
    Image.new("RGB", (128, 128)).save(tmp_path / "a.png")
    Image.new("RGB", (256, 256)).save(tmp_path / "b.png")
    _labelled(tmp_path, ["a.png", "b.png"])
    with pytest.raises(D.DatasetError, match=rf"image {tmp_path / 'a.png'} is 128x128$"):
        D.EG3DDataset(tmp_path, resolution=256)
    ds = D.EG3DDataset(tmp_path)  # the trainer sets the generator's resolution once it is built
    with pytest.raises(D.DatasetError, match="image .*a.png is 128x128"):
        ds.resolution = 256
    with pytest.raises(D.DatasetError, match="set the dataset's training resolution"):
        ds.load(0, 32)
    ds.resolution = 128
    assert ds.load(1, 32)[0].shape == (3, 128, 128)
    Image.new("RGB", (256, 256)).save(tmp_path / "c.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "d.png")
    _labelled(tmp_path, ["a.png", "b.png", "c.png", "d.png"])
    with pytest.raises(D.DatasetError) as e:
        D.EG3DDataset(tmp_path, resolution=256)
    assert str(e.value).startswith("2 of the 4 images listed in") and "are smaller than the training resolution 256x256 and would be upscaled" in str(e.value)


def test_training_refuses_a_bad_dataset_before_the_first_step(tmp_path, examples_dir, capsys):
    from train.run import main

    (tmp_path / "ds").mkdir()
    ds = make_eg3d_dataset(tmp_path / "ds", examples_dir, PHOTOS)
    Image.open(examples_dir / "goae" / "real_person" / "1.jpg").crop((0, 0, 512, 500)).save(ds / "crop.jpg")
    labels = json.loads((ds / "dataset.json").read_text())["labels"]
    (ds / "dataset.json").write_text(json.dumps({"labels": labels + [["crop.jpg", labels[0][1]]]}))
    tiny = ROOT / "train" / "configs" / "tiny.yaml"
    assert main(["--config", str(tiny), "--data", str(ds), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"error: image {ds / 'crop.jpg'} is 512x500; EG3D crops are square"
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))
