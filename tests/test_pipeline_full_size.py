"""The released architecture (random weights) on the real aligned example photos with their
ground-truth cameras: shapes, finiteness, determinism, batch == single; and from a raw photo of the
repository's examples/ (aligned by the pipeline)."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from goae.pipeline import GOAEPipeline
from tolerances import assert_mask_close


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
    for k in ("ws", "planes", "image", "image_depth"):
        torch.testing.assert_close(getattr(single, k)[0], getattr(batch, k)[1], atol=1e-3, rtol=1e-3, msg=k)
    assert_mask_close(single.mask[0], batch.mask[1], "batch vs single mask")
    view = pipe.render_view(batch, cams[:1])
    assert view["image"].shape == (2, 3, 512, 512)


@pytest.mark.slow
def test_full_size_fast_paths_against_fp32(examples_dir, monkeypatch):
    """At the released sizes: the fused C++ render kernel and the PyTorch renderer give the same
    inversion, and the bf16 fast path stays close to fp32 (the accuracy the README states)."""
    folder = examples_dir / "goae" / "real_person"
    labels = dict(json.loads((folder / "label.json").read_text())["labels"])
    photo, cam = Image.open(folder / "1.jpg"), torch.tensor(labels["1.jpg"], dtype=torch.float32)
    pipe = GOAEPipeline.from_random(seed=0)
    ref = pipe(photo, cam)
    monkeypatch.setenv("GOAE_NO_KERNELS", "1")  # the PyTorch fast renderer instead of the C++ kernel
    plain = pipe(photo, cam)
    monkeypatch.delenv("GOAE_NO_KERNELS")
    for k in ("planes", "image", "image_depth"):
        torch.testing.assert_close(getattr(plain, k), getattr(ref, k), atol=1e-4, rtol=0, msg=k)
    assert_mask_close(plain.mask, ref.mask, "kernel vs PyTorch mask")

    pipe.enable_fast_path("bf16")
    try:
        fast = pipe(photo, cam)
        fast_view = pipe.render_view(fast, cam)["image"]
    finally:
        pipe.disable_fast_path()
    ref_view = pipe.render_view(ref, cam)["image"]
    for got, want in ((fast.image, ref.image), (fast_view, ref_view)):
        assert got.dtype == torch.float32
        err = (got - want).abs()
        psnr = 10 * torch.log10(4 / err.square().mean()).item()  # images in [-1, 1]: peak-to-peak 2
        assert psnr >= 30 and err.max() <= 0.25, (psnr, err.max().item())
    assert not torch.equal(fast.image, ref.image)  # bf16 really ran


@pytest.mark.slow
def test_full_size_pipeline_from_a_raw_photo(repo_examples, landmarker):
    """pipe(photo) at the released sizes: the photo aligned (its crop and camera those of align_face), inverted."""
    from goae.align import align_face

    photo = repo_examples / "astronaut.png"
    face = align_face(photo)
    pipe = GOAEPipeline.from_random(seed=0)
    out = pipe(photo, output_type="np")
    assert out.images.shape == (1, 512, 512, 3) and out.planes.shape == (1, 96, 256, 256)
    assert out.face_box == [tuple(face.box)] and torch.equal(out.camera, torch.as_tensor(face.camera)[None])
    for k in ("ws", "planes", "image", "image_depth", "mask"):
        assert torch.isfinite(getattr(out, k)).all(), k
