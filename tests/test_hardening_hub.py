"""Issue #15, weights-folder side: `goae.weights.checks.check_pipeline_folder` refuses a folder whose config would
build a huge model, whose safetensors lack (or add, or reshape) tensors, or whose parts do not fit
together, reading only config files and safetensors headers; `check_finite` refuses NaN/Inf weights.

Before: diffusers built whatever config.json said (w_dim 16000: 3.5 GB, then a size-mismatch error),
loaded neural_rendering_resolution 1e5 without complaint (1e10 rays at the first render), and left
tensors missing from the file as uninitialised memory, with only a warning.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from goae.weights.checks import WEIGHTS_NAME, check_component_folder, check_finite, check_pipeline_folder
from goae.weights.errors import WeightsFolderError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory) -> Path:
    from goae.pipeline import GOAEPipeline

    folder = tmp_path_factory.mktemp("small") / "pipe"
    GOAEPipeline.from_preset("small", 0).save_pretrained(folder)
    return folder


@pytest.fixture
def folder(small_folder, tmp_path) -> Path:
    return Path(shutil.copytree(small_folder, tmp_path / "pipe"))


def _edit_json(path: Path, **changes) -> None:
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        *parents, last = key.split("__")
        d = cfg
        for p in parents:
            d = d[p]
        d[last] = value
    path.write_text(json.dumps(cfg))


def _edit_weights(path: Path, edit) -> None:
    sd = load_file(path)
    edit(sd)
    save_file(sd, path)


# ----------------------------------------------------------------------------- good folders pass


def test_good_folders_pass(small_folder, parity_dir, tmp_path):
    check_pipeline_folder(small_folder)
    check_component_folder(small_folder / "generator", "generator")
    from tiny import load_tiny_config, tiny_pipeline  # the parity goldens' pipeline, as the CLI tests save it

    gdir = parity_dir / "goae"
    tiny_pipeline(load_tiny_config(gdir), gdir).save_pretrained(tmp_path / "tiny")
    check_pipeline_folder(tmp_path / "tiny")


# ----------------------------------------------------------------------------- config bounds


@pytest.mark.parametrize("component,changes,match", [
    ("generator", dict(img_resolution=1e5), "'img_resolution' must be an integer in \\[128, 512\\]; got 100000.0"),
    ("generator", dict(w_dim=16000), "'w_dim' must be an integer in \\[1, 1024\\]; got 16000"),
    ("generator", dict(neural_rendering_resolution=1e5), "'neural_rendering_resolution' must be an integer in \\[8, 512\\]"),
    ("generator", dict(neural_rendering_resolution=100000), "'neural_rendering_resolution' must be an integer in \\[8, 512\\]"),
    ("generator", dict(rendering_kwargs__depth_resolution=10 ** 6), "'rendering_kwargs.depth_resolution' must be an integer in \\[1, 256\\]"),
    ("generator", dict(synthesis_kwargs__channel_max=4096), "'synthesis_kwargs.channel_max' must be an integer in \\[1, 1024\\]"),
    ("generator", dict(mapping_kwargs__num_layers=1000), "'mapping_kwargs.num_layers'"),
    ("generator", dict(sr_channels=[10 ** 6, 8]), "'sr_channels' must be a list of 2 values, each an integer in \\[1, 1024\\]"),
    ("generator", dict(z_dim="32"), "'z_dim' must be an integer in \\[1, 1024\\]; got '32'"),
    ("generator", dict(c_dim=True), "'c_dim' must be an integer"),
    ("encoder", dict(window_size=1000), "'window_size' must be an integer in \\[1, 32\\]"),
    ("encoder", dict(img_size=10 ** 5), "'img_size' must be an integer in \\[32, 1024\\]"),
    ("encoder", dict(img_size=1024), "img_size / patch_size must be at most 128; got 256"),
    ("encoder", dict(depths=[2, 2, 1000, 2]), "'depths' must be a list of 4 values"),
    ("encoder", dict(depths=[2] * 1000), "'depths' must be a list of 4 values"),
    ("encoder", dict(embed_dim=10 ** 5), "'embed_dim'"),
    ("encoder", dict(mlp_ratio=float("inf")), "'mlp_ratio' must be a number in \\[0.0, 16.0\\]"),
    ("afa", dict(feature_channels=10 ** 6), "'feature_channels' must be an integer in \\[1, 2048\\]"),
    ("afa", dict(units_per_stage=1000), "'units_per_stage'"),
    ("afa", dict(stage_channels=[16, 32, 64, 128]), "'stage_channels' must be a list of 3 values"),
])
def test_config_out_of_range(folder, component, changes, match):
    _edit_json(folder / component / "config.json", **changes)
    with pytest.raises(WeightsFolderError, match=match) as e:
        check_pipeline_folder(folder)
    assert f"{component}/config.json" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("changes,match", [
    (dict(afa_resolution=100000), "'afa_resolution' must be an integer in \\[4, 256\\]"),
    (dict(mask_blur_sigma=float("nan")), "'mask_blur_sigma' must be a number"),
    (dict(mask_threshold=5), "'mask_threshold' must be a number in \\[0.0, 1.0\\]"),
    (dict(_class_name="StableDiffusionPipeline"), "is for 'StableDiffusionPipeline', expected GOAEPipeline"),
    (dict(scheduler=["os", "system"]), "unexpected component 'scheduler'"),
    (dict(encoder=["goae.models.afa", "AFA"]), "'encoder' must be \\['goae.models.encoder', 'GOAEncoder'\\]"),
    (dict(afa_resolution=64), "afa feature_resolution 32 != afa_resolution 64; afa feature_channels 128 != generator width 64 at 64"),
])
def test_model_index(folder, changes, match):
    _edit_json(folder / "model_index.json", **changes)
    with pytest.raises(WeightsFolderError, match=match):
        check_pipeline_folder(folder)


def test_config_unbuildable(folder):
    # In range, but not an architecture the constructor accepts.
    _edit_json(folder / "generator" / "config.json", rendering_kwargs__superresolution_module="x.SuperresolutionHybrid16X")
    with pytest.raises(WeightsFolderError, match="generator/config.json: cannot build the model from it \\(EG3DConfigError"):
        check_pipeline_folder(folder)


def test_config_files_themselves(folder):
    cfg = folder / "encoder" / "config.json"
    for text, match in [("{not json", "is not valid JSON"), ("[1, 2]", "must hold a JSON object, got list"),
                        ("[" * 100_000, "is not valid JSON"), (b"\xff\xfe{}", "is not valid JSON"),
                        (" " * (2 << 20) + "{}", "a config file is at most")]:
        cfg.write_bytes(text if isinstance(text, bytes) else text.encode())
        with pytest.raises(WeightsFolderError, match=match):
            check_pipeline_folder(folder)
    shutil.copy(folder / "afa" / "config.json", cfg)
    with pytest.raises(WeightsFolderError, match="is a 'AFA' config, expected GOAEncoder"):
        check_pipeline_folder(folder)
    cfg.unlink()
    os.mkfifo(cfg)  # reading it would block forever
    with pytest.raises(WeightsFolderError, match="config.json: the config file is not a regular file"):
        check_pipeline_folder(folder)
    (folder / "model_index.json").unlink()
    with pytest.raises(WeightsFolderError, match="model_index.json: the config file is missing"):
        check_pipeline_folder(folder)


# ----------------------------------------------------------------------------- safetensors headers


def test_missing_unexpected_and_reshaped_tensors(folder):
    path = folder / "generator" / WEIGHTS_NAME
    _edit_weights(path, lambda sd: [sd.pop("backbone.mapping.w_avg"), sd.pop("decoder.net.0.bias")])
    with pytest.raises(WeightsFolderError, match="does not match its config.json: 2 missing keys: .*backbone.mapping.w_avg"):
        check_pipeline_folder(folder)
    _edit_weights(folder / "encoder" / WEIGHTS_NAME, lambda sd: sd.update(extra=torch.zeros(2)))
    with pytest.raises(WeightsFolderError, match="1 unexpected keys: extra"):
        check_component_folder(folder / "encoder", "encoder")
    _edit_weights(folder / "afa" / WEIGHTS_NAME, lambda sd: sd.update({"output_layer.0.bias": torch.zeros(3)}))
    with pytest.raises(WeightsFolderError, match="1 shape mismatches: output_layer.0.bias \\(3,\\) != \\(128,\\)"):
        check_component_folder(folder / "afa", "afa")


def test_bad_weight_files(folder):
    path = folder / "encoder" / WEIGHTS_NAME
    data = path.read_bytes()
    for bad in (data[: len(data) // 2], data[:5], b"", b"\xff" * 64):
        path.write_bytes(bad)
        with pytest.raises(WeightsFolderError, match="is not a readable safetensors file"):
            check_pipeline_folder(folder)
    path.unlink()
    (folder / "encoder" / "diffusion_pytorch_model.bin").write_bytes(b"a pickle, never read")
    with pytest.raises(WeightsFolderError, match="the weights file is missing"):
        check_pipeline_folder(folder)
    os.mkfifo(path)
    with pytest.raises(WeightsFolderError, match="the weights file is not a regular file"):
        check_pipeline_folder(folder)


def test_parts_that_do_not_fit(folder):
    from goae.models.encoder import GOAEncoder
    from goae.presets import SMALL_ENCODER

    shutil.rmtree(folder / "encoder")
    GOAEncoder(**dict(SMALL_ENCODER, w_dim=16)).save_pretrained(folder / "encoder")  # valid alone
    check_component_folder(folder / "encoder", "encoder")
    with pytest.raises(WeightsFolderError, match="do not fit together: encoder w_dim 16 != generator w_dim 32"):
        check_pipeline_folder(folder)


# ----------------------------------------------------------------------------- NaN / Inf


def test_check_finite(folder):
    from goae.models.encoder import GOAEncoder

    _edit_weights(folder / "encoder" / WEIGHTS_NAME, lambda sd: sd["mapper_base_channel.0.bias"].__setitem__(0, float("nan")))
    check_pipeline_folder(folder)  # headers only: values are checked once loaded
    encoder = GOAEncoder.from_pretrained(folder / "encoder")  # diffusers loads NaN without a word
    with pytest.raises(WeightsFolderError, match="encoder: NaN or Inf values in 1 weight tensor\\(s\\): mapper_base_channel.0.bias;"):
        check_finite(encoder, "encoder")
    sd = {"a": torch.ones(2), "b": torch.tensor([float("-inf")]), "i": torch.tensor([1]), "m": torch.empty(3, device="meta")}
    with pytest.raises(ValueError, match="x: NaN or Inf values in 1 weight tensor\\(s\\): b;"):
        check_finite(sd, "x")
    check_finite({"a": torch.ones(2)}, "x")


# ----------------------------------------------------------------------------- no big allocation


_PEAK = """
import json, resource, sys
resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # if a bomb goes off, fail instead of swapping
import torch  # counted in the baseline: the check imports it for the meta build
from goae.weights.checks import check_pipeline_folder
from goae.weights.errors import WeightsFolderError
results = {}
for path in sys.argv[1:]:
    try:
        check_pipeline_folder(path)
        results[path] = "ok"
    except WeightsFolderError as e:
        results[path] = str(e)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec (pytest's own size)
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"results": results, "peak_mb": hwm / 1024}))
"""


def test_no_large_allocation(small_folder, tmp_path):
    cases = {"img_resolution": 1e5, "w_dim": 16000, "neural_rendering_resolution": 1e5, "z_dim": 1024}
    paths = []
    for key, value in cases.items():
        p = Path(shutil.copytree(small_folder, tmp_path / key))
        _edit_json(p / "generator" / "config.json", **{key: value})
        paths.append(str(p))
    r = subprocess.run([sys.executable, "-c", _PEAK, str(small_folder), *paths], cwd=ROOT, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    results = list(out["results"].values())
    assert results[0] == "ok"
    assert all(f"'{key}' must be" in res for key, res in zip(list(cases)[:3], results[1:4]))
    assert "does not match its config.json" in results[4]  # z_dim 1024 is allowed, but not what the file holds
    assert out["peak_mb"] < 1500, out  # torch ~300 MB; from_pretrained took 3.5 GB for w_dim 16000


# ----------------------------------------------------------------------------- the domain


@pytest.mark.parametrize("value", [["cat"], {"name": "cat"}, 1, None, "dog"])
def test_domain_that_is_not_a_name(folder, value):
    # ["cat"] used to be a raw TypeError (unhashable list) from the membership test.
    _edit_json(folder / "model_index.json", domain=value)
    with pytest.raises(WeightsFolderError, match=r"model_index.json: domain must be one of \['cat', 'human'\], got ") as e:
        check_pipeline_folder(folder)
    assert "\n" not in str(e.value)


def test_domain_against_the_generators_pivot(folder, small_folder, recwarn):
    """The converter's rule (goae.domains.domain_of_pivot): a domain given against the generator's pivot is kept,
    with a warning; loading such a folder warns the same way (it used to load silently)."""
    import warnings

    from goae.weights.checks import PipelineInfo
    from goae.weights.errors import DomainMismatchWarning
    from goae.pipeline import GOAEPipeline

    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainMismatchWarning)  # a folder that agrees with its pivot: no warning
        assert check_pipeline_folder(small_folder) == PipelineInfo("human", 14, 32)  # the small preset's W+
    _edit_json(folder / "model_index.json", domain="cat")  # the small human generator (pivot 0, 0, 0.2)
    with pytest.warns(DomainMismatchWarning) as w:
        pipe = GOAEPipeline.from_pretrained(folder)
    assert pipe.domain.name == "cat" and len(w) == 1
    msg = str(w[0].message)
    assert msg == (f"{folder}: model_index.json says domain 'cat', but its generator has the avg_camera_pivot "
                   "[0, 0, 0.2] of EG3D's FFHQ model (ffhqrebalanced512-128.pkl): photos will be aligned and "
                   "framed as cat faces. If the weights are for human portraits, set \"domain\": \"human\" in "
                   "model_index.json")
