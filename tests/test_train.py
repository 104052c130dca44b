"""Training loop (train/run.py) on the tiny CPU configuration and real example photos.

One uninterrupted 24-step encoder run is the reference for several checks: it must overfit the
photos, and its step-3/step-6 checkpoints are what an interrupted-and-resumed run must reproduce
(the tiny schedule is constant, so the first 6 steps of a 24-step run == a 6-step run).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny import make_eg3d_dataset
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `train` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))
TINY = ROOT / "train" / "configs" / "tiny.yaml"
PHOTOS = ("1.jpg", "2.jpg", "4.jpg", "5.jpg")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, examples_dir) -> Path:
    return make_eg3d_dataset(tmp_path_factory.mktemp("ds"), examples_dir, PHOTOS)


def train_cmd(data: Path, out: Path, *extra: str, launcher: list[str] | None = None) -> list[str]:
    launcher = launcher or [sys.executable]
    return [*launcher, str(ROOT / "train" / "run.py"), "--config", str(TINY), "--data", str(data),
            "--out", str(out), *extra]


def run_train(*args, launcher=None, timeout=300) -> subprocess.CompletedProcess:
    p = subprocess.run(train_cmd(*args, launcher=launcher), env=ENV, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def ckpt(run: Path, step: int) -> dict:
    return torch.load(run / "checkpoints" / f"step_{step:07d}.pt", map_location="cpu", weights_only=True)


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].is_floating_point())


@pytest.fixture(scope="module")
def reference(dataset_dir, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("ref") / "run"
    p = run_train(dataset_dir, out, "--stage", "encoder", "--max-steps", "24",
                  "--set", "log.ckpt_every=3", "--set", "log.keep=20", "--set", "log.sample_every=24")
    return out, p


@pytest.mark.slow
def test_overfits_real_photos(reference):
    out, p = reference
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))
    l2 = [r["l2"] for r in log]
    first, last = sum(l2[:6]) / 6, sum(l2[-6:]) / 6  # 6 steps = 3 epochs of the 4 photos
    print(f"reconstruction MSE: first 6 steps {first:.4f}, last 6 steps {last:.4f}, ratio {last / first:.3f}")
    assert last < 0.6 * first
    assert {"lpips", "id", "adv", "d_loss", "depth", "delta", "sec_per_step"} <= log[-1].keys()
    assert "step/s" in p.stderr or "s/step" in p.stderr  # progress bar with its rate
    assert (out / "samples" / "step_0000024.png").is_file()
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000024.pt"


@pytest.mark.slow
def test_killed_run_resumes_exactly(reference, dataset_dir, tmp_path):
    ref, _ = reference
    out = tmp_path / "run"
    args = ["--stage", "encoder", "--max-steps", "6", "--set", "log.ckpt_every=3", "--set", "log.keep=20"]
    proc = subprocess.Popen(train_cmd(dataset_dir, out, *args), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "step_0000003.pt"
    deadline = time.time() + 240
    while not (out / "checkpoints" / "latest").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    assert first.is_file() and not (out / "final").exists()
    run_train(dataset_dir, out, *args, "--resume")
    resumed, straight = ckpt(out, 6), ckpt(ref, 6)
    assert resumed["step"] == straight["step"] == 6
    assert resumed["data_position"] == straight["data_position"]
    d_model, d_disc = max_diff(resumed["model"], straight["model"]), max_diff(resumed["discriminator"], straight["discriminator"])
    print(f"resume vs uninterrupted: max |diff| encoder {d_model:.3g}, discriminator {d_disc:.3g}")
    assert d_model < 1e-5 and d_disc < 1e-5
    steps = [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))  # lines the killed run wrote past its checkpoint were dropped


@pytest.mark.slow
def test_ddp_two_processes_equal_one(dataset_dir, tmp_path):
    """gloo, 2 ranks x 1 photo (+ 1 synthetic sample each) == 1 process x 2 (+ 2), same seed.

    Adam's update is lr * g / (|g| + eps): for elements whose gradient is ~0, fp32 summation-order noise
    (a batch mean vs. an all-reduce of two half-batch means) can flip the sign and move them by up to lr.
    A small lr (the encoder's and the latent discriminator's) keeps such flips below the tolerance; the gradients themselves (Adam's exp_avg) must agree."""
    args = ["--stage", "encoder", "--max-steps", "2", "--set", "data.synthetic_per_batch=2", "--set", "log.progress=false",
            "--set", "encoder_stage.lr=1e-6", "--set", "encoder_stage.d_lr=1e-6", "--set", "encoder_stage.lambda_id=0.5"]
    run_train(dataset_dir, tmp_path / "one", *args)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    run_train(dataset_dir, tmp_path / "two", *args, launcher=launcher)
    one, two = ckpt(tmp_path / "one", 2), ckpt(tmp_path / "two", 2)
    d_model, d_disc = max_diff(one["model"], two["model"]), max_diff(one["discriminator"], two["discriminator"])
    m1 = torch.cat([s["exp_avg"].flatten() for s in one["optimizer"]["state"].values()])
    m2 = torch.cat([s["exp_avg"].flatten() for s in two["optimizer"]["state"].values()])
    d_grad = ((m1 - m2).abs().max() / m1.abs().max()).item()
    print(f"DDP 2x1 vs 1x2: max |diff| encoder {d_model:.3g}, discriminator {d_disc:.3g}, "
          f"gradient average (exp_avg) relative {d_grad:.3g}")
    assert d_model < 1e-5 and d_disc < 1e-5 and d_grad < 1e-3
    logs = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    assert logs[-1]["latent"] > 0 and logs[-1]["id"] > 0  # synthetic samples' latent loss and the ID loss ran


@pytest.mark.slow
def test_trained_folders_load_and_invert(reference, dataset_dir, examples_dir, tmp_path):
    """Encoder result (AFA level 32) and an AFA stage at level 64 trained from it: both load and invert."""
    from PIL import Image

    from goae.pipeline import GOAEPipeline

    ref, _ = reference
    out = tmp_path / "afa64"
    run_train(dataset_dir, out, "--stage", "afa", "--init", str(ref / "final"), "--max-steps", "2",
              "--set", "model.afa_resolution=64")
    photo = Image.open(examples_dir / "goae" / "real_person" / "9.jpg")
    cam = dict(json.loads((examples_dir / "goae" / "real_person" / "label.json").read_text())["labels"])["9.jpg"]
    enc = GOAEPipeline.from_pretrained(str(ref / "final"))
    trained = ckpt(ref, 24)["model"]
    assert max_diff(enc.encoder.state_dict(), trained) == 0  # final/ holds the trained encoder
    for folder, level in ((ref / "final", 32), (out / "final", 64)):
        card = (folder / "README.md").read_text()  # the model card: licence and how it was made
        assert "license_name" in card and "trained by train/run.py" in card
        pipe = GOAEPipeline.from_pretrained(str(folder))
        assert pipe.config.afa_resolution == level and pipe.afa.config.feature_resolution == level
        res = pipe(photo, cam)
        assert res.image.shape == (1, 3, 512, 512) and torch.isfinite(res.image).all()
        assert res.ws.shape == (1, 14, pipe.generator.w_dim)
    assert max_diff(pipe.encoder.state_dict(), trained) == 0  # the afa stage kept the encoder frozen


def test_clear_errors(dataset_dir, tmp_path, capsys):
    from train.config import ConfigError, load_config
    from train.data import DatasetError, EG3DDataset
    from train.run import main

    with pytest.raises(ConfigError, match="unknown config key 'train.bach_size'"):
        load_config(TINY, ["train.bach_size=4"])
    with pytest.raises(ConfigError, match="model.afa_resolution must be one of"):
        load_config(TINY, ["model.afa_resolution=16"])
    with pytest.raises(DatasetError, match="does not exist"):
        EG3DDataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="camera labels .*label.json not found"):
        EG3DDataset(dataset_dir, labels="label.json")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "dataset.json").write_text(json.dumps({"labels": [["a.jpg", [0.0] * 24]]}))
    with pytest.raises(DatasetError, match="'a.jpg' must be 25 finite numbers"):
        EG3DDataset(bad)
    (bad / "dataset.json").write_text(json.dumps({"labels": [["a.jpg", [0.0] * 25]]}))
    with pytest.raises(DatasetError, match="cannot read image .*a.jpg"):
        EG3DDataset(bad).load(0, 64)
    (bad / "dataset.json").write_text(json.dumps({"labels": [["b.jpg", [0.0] * 25]]}))
    with pytest.raises(DatasetError, match="b.jpg listed in"):
        EG3DDataset(bad)
    from train.stages import ReconstructionLoss

    with pytest.raises(ConfigError, match="losses.lpips_vgg16"):
        ReconstructionLoss(load_config(TINY, ["losses.lpips=pretrained"]), "encoder", "cpu")
    assert main(["--config", str(TINY), "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder" in capsys.readouterr().err
    assert main(["--config", str(TINY), "--data", str(dataset_dir), "--out", str(tmp_path / "o"),
                 "--set", "encoder_stage.lamda_l2=1"]) == 2
    assert "unknown config key 'encoder_stage.lamda_l2'" in capsys.readouterr().err


def test_data_order_is_world_size_independent():
    from train.data import rank_slice, stream_indices, synthetic_codes

    items = stream_indices(5, seed=3, position=7, count=8)  # crosses an epoch boundary
    assert items == stream_indices(5, 3, 0, 15)[7:] and sorted(stream_indices(5, 3, 5, 5)) == list(range(5))
    parts = [items[rank_slice(8, r, 2, m, 2)] for m in range(2) for r in range(2)]
    assert sum(parts, []) == items  # micro-step-major, rank-minor: the global batch, whatever the split
    z, yaw, pitch = synthetic_codes(0, 5, range(0, 4), 8, 0.5, 0.2)
    z2, yaw2, _ = synthetic_codes(0, 5, range(2, 4), 8, 0.5, 0.2)
    assert torch.equal(z[2:], z2) and torch.equal(yaw[2:], yaw2) and yaw.abs().max() <= 0.5


def test_ranger_lookahead_and_checkpoint_files(tmp_path):
    from train.checkpoint import CheckpointError, find_latest, list_checkpoints, load_checkpoint, save_checkpoint
    from train.optim import Ranger

    def run(steps, opt_state=None, start=None):
        p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]) if start is None else start.clone())
        opt = Ranger([p], lr=0.1, k=2, alpha=0.5)
        if opt_state is not None:
            opt.load_state_dict(opt_state)
        for _ in range(steps):
            p.grad = p.detach() * 2  # d/dp of p^2
            opt.step()
        return p.detach(), opt
    plain = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    radam = torch.optim.RAdam([plain], lr=0.1, betas=(0.95, 0.999), eps=1e-5)
    for _ in range(2):
        plain.grad = plain.detach() * 2
        radam.step()
    p2, opt = run(2)
    torch.testing.assert_close(p2, torch.tensor([1.0, -2.0, 3.0]) + 0.5 * (plain.detach() - torch.tensor([1.0, -2.0, 3.0])))
    p5, _ = run(5)
    p5_resumed, _ = run(3, opt.state_dict(), start=p2)
    assert torch.equal(p5, p5_resumed)  # the slow weights and RAdam moments travel in the state dict

    for step in (3, 6, 9):
        save_checkpoint(tmp_path, step, {"step": step, "w": torch.ones(2) * step}, keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_0000006.pt", "step_0000009.pt"]
    assert find_latest(tmp_path).name == "step_0000009.pt" and load_checkpoint(find_latest(tmp_path))["step"] == 9
    (tmp_path / "checkpoints" / "step_0000009.pt").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match="step_0000009.pt"):
        load_checkpoint(find_latest(tmp_path))


@pytest.mark.parametrize("config,preset", [("goae_ffhq.yaml", "small"), ("goae_afhqcats.yaml", "small-cat")])
def test_shipped_configs_start_on_every_documented_gpu_count(config, preset):
    """The README's `torchrun --nproc_per_node=8` (and 1, 2, 4 processes): real photos and synthetic samples
    of a global batch split evenly over the processes (the check train/run.py makes before anything loads)."""
    from train.config import ConfigError, check_partition, load_config

    cfg = load_config(ROOT / "train" / "configs" / config, [f"model.preset={preset}"])
    assert cfg["data"]["synthetic_per_batch"] > 0
    for world in (1, 2, 4, 8):
        check_partition(cfg, world)
    with pytest.raises(ConfigError, match=r"data.synthetic_per_batch=8 must be divisible by .* = 3 x 1 = 3"):
        check_partition(load_config(ROOT / "train" / "configs" / config,
                                    [f"model.preset={preset}", "train.batch_size=12"]), 3)
    with pytest.raises(ConfigError, match="synthetic_per_batch must be an integer >= 0"):
        load_config(ROOT / "train" / "configs" / config, [f"model.preset={preset}", "data.synthetic_per_batch=-1"])


def test_training_turns_tf32_off(monkeypatch):
    """Official EG3D training runs with TF32 off (matmuls and cuDNN convolutions); so does train/run.py,
    whatever the process had set before."""
    from train.run import Dist

    for flag in (torch.backends.cuda.matmul, torch.backends.cudnn):
        monkeypatch.setattr(flag, "allow_tf32", True)   # restored after the test
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    Dist("cpu")
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
