"""The released architecture (random weights) on the real aligned example photos with their
ground-truth cameras: shapes, finiteness, determinism, batch == single."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from goae.pipeline import GOAEPipeline


@pytest.mark.slow
def test_full_size_pipeline_on_real_photos(examples_dir):
    folder = examples_dir / "goae" / "real_person"
    labels = dict(json.loads((folder / "label.json").read_text())["labels"])
    names = ["1.jpg", "11.jpg"]  # near-frontal and a strong profile
    photos = [Image.open(folder / n) for n in names]
    cams = torch.tensor([labels[n] for n in names], dtype=torch.float32)
    pipe = GOAEPipeline.from_random(seed=0)
    batch = pipe(photos, cams)
    assert batch.ws.shape == (2, 14, 512) and batch.planes.shape == (2, 96, 256, 256)
    assert batch.image.shape == (2, 3, 512, 512) and batch.image_depth.shape == (2, 1, 128, 128)
    assert batch.mask.shape == (2, 1, 256, 256)
    for k in ("ws", "planes", "image", "image_raw", "image_depth", "mask"):
        assert torch.isfinite(getattr(batch, k)).all(), k
    single = pipe(photos[1], cams[1])
    again = pipe(photos[1], cams[1])
    for k in ("ws", "planes", "image", "image_depth", "mask"):
        assert torch.equal(getattr(single, k), getattr(again, k)), f"{k} not deterministic"
        torch.testing.assert_close(getattr(single, k)[0], getattr(batch, k)[1], atol=1e-3, rtol=1e-3, msg=k)
    view = pipe.render_view(batch, cams[:1])
    assert view["image"].shape == (2, 3, 512, 512)
