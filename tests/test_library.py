"""goae as a library, the diffusers way: precision at load time, output types, model cards, quiet loading."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goae import fast
from goae.camera import camera_label
from goae.pipeline import GOAEPipeline

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("lib") / "pipe"
    GOAEPipeline.from_preset("small", 0).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(4)
    return torch.rand(1, 3, 512, 512, generator=g) * 2 - 1, camera_label(0.1, 0.0)


def psnr(a, b) -> float:
    return float(10 * torch.log10(4.0 / ((a.double() - b.double()) ** 2).mean()))


def test_saved_folder_has_a_model_card_with_the_weights_licence(folder):
    card = (folder / "README.md").read_text()
    front = card.split("---")[1]
    for key in ("library_name", "pipeline_tag", "license", "license_name", "license_link", "tags"):
        assert f"\n{key}:" in front, key
    assert '"other"' in front and "nvidia-source-code-license-nc" in front
    assert "non-commercial" in card and "GOAEPipeline.from_pretrained" in card and "goae version" in card
    assert {p.name for p in folder.iterdir()} == {"README.md", "model_index.json", "generator", "encoder", "afa"}


def test_save_refuses_to_replace_a_folder_that_is_not_a_pipeline(tmp_path):
    other = tmp_path / "mine"
    other.mkdir()
    (other / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not a pipeline folder"):
        GOAEPipeline.from_preset("small", 0).save_pretrained(other)
    assert (other / "thesis.tex").read_text() == "precious" and len(list(other.iterdir())) == 1


def test_directions_travel_with_the_folder(folder, tmp_path):
    from goae.edit import save_direction

    pipe = GOAEPipeline.from_pretrained(folder)
    dirs = tmp_path / "d"
    save_direction(dirs / "smile.safetensors", torch.randn(pipe.generator.num_ws, pipe.generator.w_dim))
    pipe.directions_dir = dirs
    pipe.save_pretrained(tmp_path / "with_dirs")
    again = GOAEPipeline.from_pretrained(tmp_path / "with_dirs")
    assert again.directions_dir is not None and (again.directions_dir / "smile.safetensors").is_file()


def test_bf16_at_load_time_runs_the_fast_path_with_float32_outputs(folder, photo):
    ref = GOAEPipeline.from_pretrained(folder)(*photo)
    assert GOAEPipeline.from_pretrained(folder, dtype=torch.bfloat16).fast_path.precision == "bf16"
    pipe = GOAEPipeline.from_pretrained(folder, torch_dtype=torch.bfloat16)
    assert pipe.fast_path.precision == "bf16"
    assert all(p.dtype == torch.float32 for p in pipe.generator.parameters())  # fp32 master weights
    out = pipe(*photo)
    assert out.image.dtype == torch.float32 and out.planes.dtype == torch.float32
    assert psnr(out.image, ref.image) >= 30
    pipe.to(torch.float32)
    assert pipe.fast_path is None and torch.equal(pipe(*photo).image, ref.image)


def test_fp16_on_a_cpu_says_what_to_use_instead(folder):
    with pytest.raises(fast.FastPathError, match="bfloat16"):
        GOAEPipeline.from_pretrained(folder, torch_dtype=torch.float16)
    with pytest.raises(ValueError, match="torch.float32, torch.bfloat16 or torch.float16"):
        GOAEPipeline.from_pretrained(folder, torch_dtype=torch.float64)


def test_output_types_and_tuples(folder, photo):
    pipe = GOAEPipeline.from_pretrained(folder)
    out = pipe(*photo)
    assert isinstance(out.images, list) and isinstance(out.images[0], Image.Image) and out.images[0].size == (512, 512)
    want = ((out.image[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1)
    np_out = pipe(*photo, output_type="np")
    assert np_out.images.shape == (1, 512, 512, 3) and np_out.images.dtype == np.float32
    assert np.allclose(np_out.images[0], want.numpy())
    pt = pipe(*photo, output_type="pt").images
    assert pt.shape == (1, 3, 512, 512) and float(pt.min()) >= 0 and float(pt.max()) <= 1
    assert np.abs(np.asarray(out.images[0], dtype=np.float32) / 255 - want.numpy()).max() <= 0.5 / 255 + 1e-6
    assert pipe(*photo, output_type=None).images is None
    images, ws, planes = pipe(*photo, return_dict=False)
    assert torch.equal(ws, out.ws) and torch.equal(planes, out.planes) and len(images) == 1
    view = pipe.render_view(None, camera_label(0.4, 0.0), ws=ws, planes=planes, output_type="np")
    assert view.images.shape == (1, 512, 512, 3) and view["image_depth"].shape[0] == 1
    (only,) = pipe.render_view(out, camera_label(0.4, 0.0), return_dict=False)
    assert isinstance(only[0], Image.Image)
    edited = pipe.edit(out, torch.zeros(pipe.generator.num_ws, pipe.generator.w_dim), output_type="pt")
    assert edited.images.shape == (1, 3, 512, 512)
    with pytest.raises(ValueError, match="output_type"):
        pipe(*photo, output_type="latent")


def test_preview_is_the_neural_rendering_upsampled(folder, photo):
    pipe = GOAEPipeline.from_pretrained(folder)
    out = pipe(*photo, output_type=None)
    cam = camera_label(0.3, 0.1)
    prev = pipe.preview_view(out, cam, resolution=32, output_type="np")
    raw = pipe.render_view(out, cam, superresolution=False, neural_rendering_resolution=32, output_type=None)
    assert prev.image.shape == (1, 3, 512, 512) and prev.image_depth.shape == (1, 1, 512, 512)
    assert prev.images.shape == (1, 512, 512, 3)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(prev.image, 16), raw.image_raw, atol=0.05, rtol=0)


def test_loading_is_quiet_and_offload_is_not_advertised(folder):
    script = ("import sys; from goae.pipeline import GOAEPipeline; p = GOAEPipeline.from_pretrained(sys.argv[1]);"
              "\ntry:\n    p.enable_model_cpu_offload()\nexcept Exception as e:\n    print('offload:', e)")
    proc = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "accelerate" not in proc.stderr and "Loading pipeline components" not in proc.stderr, proc.stderr
    assert "offload:" in proc.stdout and "model_cpu_offload_seq" in proc.stdout
