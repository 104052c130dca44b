"""train/stages.py and the stage-agnostic Trainer: precision of the renders, logs without per-step host
syncs, the stage registry, and collectives on the rank's device."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from tiny import make_eg3d_dataset, one_thread  # noqa: F401  (autouse fixture)
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `train` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))

from train import data as D  # noqa: E402
from train.config import load_config  # noqa: E402
from train.run import Dist, Trainer  # noqa: E402
from train.stages import STAGES, AFAStage, EncoderStage  # noqa: E402

TINY = ROOT / "train" / "configs" / "tiny.yaml"
PHOTOS = ("1.jpg", "2.jpg")



@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, examples_dir) -> Path:
    return make_eg3d_dataset(tmp_path_factory.mktemp("ds"), examples_dir, PHOTOS)


@pytest.fixture(scope="module")
def init_dir(tmp_path_factory) -> Path:
    from goae.pipeline import GOAEPipeline

    d = tmp_path_factory.mktemp("init") / "pipe"
    GOAEPipeline.from_preset("small", seed=0).save_pretrained(str(d))
    return d


def trainer(dataset_dir, tmp_path, stage, *overrides) -> Trainer:
    cfg = load_config(TINY, [f"data.path={dataset_dir}", "data.synthetic_per_batch=2", "data.workers=0", *overrides])
    return Trainer(cfg, stage, tmp_path / stage, tmp_path / "final", Dist("cpu"))


def first_batch(t: Trainer) -> dict:
    return D.to_device(*next(t.loader(1)), t.device)


@pytest.mark.parametrize("stage", ["encoder", "afa"])
def test_bf16_network_passes_fp32_renders(dataset_dir, init_dir, tmp_path, stage):
    """train.precision=bf16: the networks run in bf16, the volume rendering (depth, raw image) in fp32."""
    t = trainer(dataset_dir, tmp_path, stage, "train.precision=bf16", f"model.init={init_dir}")
    seen = []
    fc = t.encoder.swin_model.layers[0].blocks[0].mlp.fc1
    hook = fc.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with torch.no_grad():
        out = t.stage.run(first_batch(t), step=0)
    hook.remove()
    assert seen == [torch.bfloat16]  # autocast was on
    assert out["image_depth"].dtype == torch.float32 and out["rgb"].dtype == torch.float32
    assert torch.isfinite(out["image_depth"]).all()


def test_train_step_logs_without_host_syncs(dataset_dir, tmp_path, monkeypatch):
    """train_step hands back tensors; the loop turns them into numbers once, after the step (Dist.mean)."""
    t = trainer(dataset_dir, tmp_path, "encoder")
    batches = t.loader(1)
    calls = []

    def spy(name, real):
        def call(self, *args):
            calls.append((name, sys._getframe(1).f_code.co_filename))
            return real(self, *args)
        return call
    for name in ("item", "tolist", "__float__", "__bool__"):
        monkeypatch.setattr(torch.Tensor, name, spy(name, getattr(torch.Tensor, name)))
    logs = t.train_step(batches)
    monkeypatch.undo()
    ours = [(n, f) for n, f in calls if Path(f).resolve().parent == ROOT / "train"]
    assert ours == [], ours  # (the goae/ models' own syncs are theirs)
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in logs.values())
    assert list(logs) == ["l2", "lpips", "id", "delta", "latent", "depth", "adv", "loss", "d_loss", "r1"]
    values = t.dist.mean(logs)
    assert all(isinstance(v, float) for v in values.values()) and values["latent"] > 0 and t.step == 1


def test_stage_registry():
    assert list(STAGES) == ["encoder", "afa"] and STAGES["encoder"] is EncoderStage and STAGES["afa"] is AFAStage
    import inspect

    import train.run as run

    source = inspect.getsource(run.Trainer)
    assert '"encoder"' not in source and '"afa"' not in source  # the loop does not know the stages


def test_dist_reduces_on_its_device():
    """nccl all-reduces only device tensors: the numbers go to the rank's device before the collective."""
    d = Dist("cpu")
    d.device = torch.device("meta")
    t = d.stack({"a": 1.0, "b": torch.tensor(2.0), "c": torch.tensor(3.0, dtype=torch.float64)})
    assert t.device.type == "meta" and t.shape == (3,) and t.dtype == torch.float64
    assert Dist("cpu").mean({"a": torch.tensor(1.5), "b": 2}) == {"a": 1.5, "b": 2.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device for an nccl group")
def test_dist_mean_with_nccl(monkeypatch, tmp_path):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("RANK", "0")
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rdzv'}", rank=0, world_size=1)
    try:
        d = Dist("cuda")
        assert d.mean({"a": torch.tensor(1.5, device="cuda"), "b": 2.0}) == {"a": 1.5, "b": 2.0}
        assert d.all_ok(True)
    finally:
        dist.destroy_process_group()
