"""Train GOAE: stage `encoder` (into EG3D's canonical latent space), then stage `afa` (generator frozen).

Usage
    # the paper's setting (FFHQ-512 in EG3D's dataset layout, a converted EG3D generator):
    python train/run.py --config train/configs/goae_ffhq.yaml --data /data/ffhq512 --out runs/goae \
        --set model.generator=weights/eg3d-ffhq512 --set losses.lpips_vgg16=weights/vgg16-397923af.pth \
        --set losses.lpips_lin=weights/lpips_vgg_v0.1.pth --set losses.id_weights=weights/model_ir_se50.pth
    # several GPUs (or CPU processes with gloo): the same command under torchrun
    torchrun --nproc_per_node=8 train/run.py --config ... --data ... --out ...
    # the tiny CPU configuration (random-weight `small` generator), for CI and for trying it:
    python train/run.py --config train/configs/tiny.yaml --data DIR --labels label.json --out DIR --max-steps 20
    # continue a killed run where its last checkpoint stopped:
    python train/run.py ...same arguments... --resume

Options: --stage encoder|afa|all, --init PIPELINE_DIR (start the afa stage from an encoder result),
--max-steps N (per stage), --batch-size, --accum-steps, --precision fp32|bf16|fp16, --seed,
--set key.sub=value (any key of train/configs/goae_ffhq.yaml; unknown keys are an error).

Output (`--out DIR`; with stage `all` the encoder run lives in DIR/encoder and the afa run in DIR/afa):
    log.jsonl                 losses, learning rate and seconds per step (rank 0)
    samples/step_XXXXXXX.png  input | W reconstruction | final | novel view
    checkpoints/step_XXXXXXX.pt + latest
    final/                    a GOAEPipeline folder (GOAEPipeline.from_pretrained(DIR/final))
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from PIL import Image

if __package__ in (None, ""):  # `python train/run.py`: make `train` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goae.camera import camera_label  # noqa: E402
from goae.io import atomic_dir, atomic_path  # noqa: E402
from train import data as D  # noqa: E402
from train.checkpoint import CheckpointError, find_latest, load_checkpoint, rng_state, save_checkpoint, set_rng_state  # noqa: E402
from train.config import ConfigError, load_config  # noqa: E402
from train.optim import make_optimizer, make_scheduler  # noqa: E402
from train.stages import AFAStage, EncoderStage, background_depth_loss, progressive_stage, resize  # noqa: E402


# ---------------------------------------------------------------------------------------------- set-up
class Dist:
    """torchrun environment (RANK/WORLD_SIZE/LOCAL_RANK), or a single process."""

    def __init__(self, device_pref: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available() if device_pref == "auto" else device_pref == "cuda"
        if cuda and not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available")
        self.device = torch.device(f"cuda:{local}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, values: dict[str, float]) -> dict[str, float]:
        if self.world == 1 or not values:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.world).tolist()))


def build_models(cfg: dict, device) -> tuple:
    """(generator, encoder, afa): frozen G from a folder or preset; encoder/AFA from model.init or new."""
    from goae.models.afa import AFA
    from goae.models.eg3d import EG3DGenerator
    from goae.models.encoder import GOAEncoder
    from goae.pipeline import GOAEPipeline
    from goae.presets import SMALL_AFA, SMALL_ENCODER

    m = cfg["model"]
    torch.manual_seed(cfg["seed"])
    enc_kw, afa_kw = {}, {}
    if m["preset"] == "small":
        G = GOAEPipeline.from_preset("small", seed=cfg["seed"]).generator
        enc_kw, afa_kw = dict(SMALL_ENCODER), dict(SMALL_AFA)
    else:
        folder = Path(m["generator"])
        if not folder.is_dir():
            raise ConfigError(f"model.generator {folder} is not a folder (an EG3D generator or GOAE pipeline folder "
                              f"from `goae convert`)")
        if (folder / "model_index.json").is_file():
            G = GOAEPipeline.from_pretrained(str(folder), low_cpu_mem_usage=False).generator
        else:
            G = EG3DGenerator.from_pretrained(str(folder), low_cpu_mem_usage=False)
    G = G.to(device).eval().requires_grad_(False)
    res = m["afa_resolution"]
    with torch.no_grad():  # width of the generator block AFA modulates
        channels = G.feature_channels(res)
    afa_kw.update(feature_resolution=res, feature_channels=channels, **m["afa"])
    enc_kw.update(w_dim=G.w_dim, num_ws=G.num_ws, **m["encoder"])
    torch.manual_seed(cfg["seed"] + 1)
    encoder, afa = GOAEncoder(**enc_kw), AFA(**afa_kw)
    if m["init"]:
        init = GOAEPipeline.from_pretrained(str(m["init"]), low_cpu_mem_usage=False)
        encoder = init.encoder
        if dict(init.afa.config)["feature_resolution"] == res:
            afa = init.afa
    return G, encoder.to(device), afa.to(device)


def build_losses(cfg: dict, stage: str, device) -> tuple[nn.Module | None, nn.Module | None]:
    """LPIPS and identity nets (frozen), or None where the stage gives the loss weight 0."""
    from train.losses import IDLoss, LPIPS

    c, s = cfg["losses"], cfg[f"{stage}_stage"]
    torch.manual_seed(cfg["seed"] + 2)  # random-weight nets must be the same in every process and run
    lpips = idl = None
    for name, paths in (("lpips", ("lpips_vgg16", "lpips_lin")), ("id", ("id_weights",))):
        missing = [k for k in paths if not c[k]]
        if c[name] == "pretrained" and s[f"lambda_{name}"] > 0 and missing:
            raise ConfigError(f"losses.{name}=pretrained needs the weight file(s) {', '.join('losses.' + k for k in missing)} "
                              f"(vgg16-397923af.pth from torchvision, lpips' weights/v0.1/vgg.pth, pSp's model_ir_se50.pth); "
                              f"losses.{name}=random is for tests only")
    if s["lambda_lpips"] > 0:
        lpips = LPIPS() if c["lpips"] == "random" else LPIPS.from_pretrained(c["lpips_vgg16"], c["lpips_lin"])
        lpips = lpips.to(device).eval().requires_grad_(False)
    if s["lambda_id"] > 0:
        idl = IDLoss() if c["id"] == "random" else IDLoss.from_pretrained(c["id_weights"])
        idl = idl.to(device).eval().requires_grad_(False)
    return lpips, idl


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, cfg: dict, stage: str, run_dir: Path, final_dir: Path, dist_: Dist):
        self.cfg, self.stage, self.run_dir, self.final_dir, self.dist = cfg, stage, run_dir, final_dir, dist_
        self.scfg = cfg[f"{stage}_stage"]
        t, dev = cfg["train"], dist_.device
        self.device = dev
        n_parts = dist_.world * t["accum_steps"]
        for name, count in (("train.batch_size", t["batch_size"]), ("data.synthetic_per_batch", cfg["data"]["synthetic_per_batch"])):
            if count % n_parts:
                raise ConfigError(f"{name}={count} must be divisible by processes x accum_steps = {n_parts}")
        self.dataset = D.EG3DDataset(cfg["data"]["path"], cfg["data"]["labels"], xflip=cfg["data"]["xflip"])  # fail fast
        self.G, self.encoder, self.afa = build_models(cfg, dev)
        self.dataset.resolution = self.G.img_resolution
        self.lpips, self.id_loss = build_losses(cfg, stage, dev)
        kw = dict(afa_resolution=cfg["model"]["afa_resolution"], neural_rendering_resolution=t["neural_rendering_resolution"],
                  render=t["render"], mask_threshold=cfg["model"]["mask_threshold"], autocast=self._autocast)
        if stage == "encoder":
            from train.discriminator import LatentCodesDiscriminator

            self.module = EncoderStage(self.encoder, self.G, **kw).to(dev)
            torch.manual_seed(cfg["seed"] + 3)
            self.disc = LatentCodesDiscriminator(self.G.w_dim, self.scfg["d_layers"]).to(dev)
            self.d_opt = make_optimizer("adam", self.disc.parameters(), self.scfg["d_lr"])
            with torch.no_grad():  # mean face: reference depth of the background regulariser
                w_avg = self.G.mean_ws()
                self.planes_avg, self.ws_avg = self.G.synthesize_planes(w_avg), w_avg
        else:
            if not cfg["model"]["init"]:
                raise ConfigError("stage afa trains AFA on a trained encoder: set --init (model.init) to the encoder "
                                  "stage's final/ folder, or use --stage all")
            self.encoder.eval().requires_grad_(False)
            self.module = AFAStage(self.afa, self.encoder, self.G, afa_image_resolution=t["afa_image_resolution"],
                                   **kw).to(dev)
            self.disc = None
        self.trained = self.encoder if stage == "encoder" else self.afa
        self.opt = make_optimizer(self.scfg["optimizer"], self.trained.parameters(), self.scfg["lr"])
        self.sched = make_scheduler(self.opt, self.scfg["scheduler"], self.scfg["warmup_steps"], self.scfg["max_steps"])
        if t["precision"] == "fp16" and dev.type != "cuda":
            raise ConfigError("train.precision=fp16 needs CUDA (use bf16 on CPU)")
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t["precision"]]
        self.scaler = torch.amp.GradScaler(dev.type, enabled=t["precision"] == "fp16")
        self.ddp = self.module
        if dist_.world > 1 and dev.type == "cuda" and t["module_mode"] == "train":
            nn.SyncBatchNorm.convert_sync_batchnorm(self.module)  # AFA's batch statistics over the global batch
        if dist_.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # The progressive encoder leaves row groups unused until their stage starts.
            unused = stage == "encoder" and (self.scfg["progressive_start"] > 0 or self.scfg["progressive_every"] > 0)
            self.ddp = DDP(self.module, device_ids=[dev] if dev.type == "cuda" else None, broadcast_buffers=False,
                           find_unused_parameters=unused)
        self.step, self.position = 0, 0

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict:
        s = {"stage": self.stage, "step": self.step, "data_position": self.position, "config": self.cfg,
             "model": self.trained.state_dict(), "optimizer": self.opt.state_dict(),
             "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state()}
        if self.disc is not None:
            s.update(discriminator=self.disc.state_dict(), d_optimizer=self.d_opt.state_dict())
        return s

    def load_state(self, s: dict, path: Path) -> None:
        if s.get("stage") != self.stage:
            raise ConfigError(f"checkpoint {path} is of stage {s.get('stage')!r}, this run trains {self.stage!r}")
        self.trained.load_state_dict(s["model"])
        self.opt.load_state_dict(s["optimizer"])
        self.sched.load_state_dict(s["scheduler"])
        self.scaler.load_state_dict(s["scaler"])
        if self.disc is not None:
            self.disc.load_state_dict(s["discriminator"])
            self.d_opt.load_state_dict(s["d_optimizer"])
        set_rng_state(s["rng"])
        self.step, self.position = int(s["step"]), int(s["data_position"])
        changed = [k for k in self.cfg if s["config"].get(k) != self.cfg[k]]
        if changed and self.dist.main:  # allowed (e.g. more steps), but the run is no longer one uninterrupted run
            print(f"warning: resuming {path} with a changed config (sections {changed})", file=sys.stderr)

    # -- one optimiser step -----------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _recon_losses(self, rgb: torch.Tensor, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample MSE, LPIPS and identity loss at train.loss_resolution -> dict of [N]."""
        r = self.cfg["train"]["loss_resolution"]
        y_hat, y = resize(rgb.float(), r), resize(x, r)
        zero = y_hat.new_zeros(y_hat.shape[0])  # a loss of weight 0 is not computed
        return {"l2": (y_hat - y).pow(2).flatten(1).mean(1),
                "lpips": self.lpips(y_hat, y).reshape(-1) if self.lpips is not None else zero,
                "id": self.id_loss(y_hat, y).reshape(-1) if self.id_loss is not None else zero}

    def _synthetic(self, rank_part: slice) -> dict[str, torch.Tensor]:
        """Frozen-G samples: canonical code ws_c = mapping(z, canonical camera), rendered at a random camera."""
        d, G = self.cfg["data"], self.G
        idx = range(rank_part.start, rank_part.stop)
        z, yaw, pitch = D.synthetic_codes(self.cfg["seed"], self.step, idx, G.z_dim, d["synthetic_yaw"], d["synthetic_pitch"])
        z, c = z.to(self.device), camera_label(yaw, pitch, device=self.device)
        with torch.no_grad():
            ws_c = G.mapping(z, camera_label(0.0, 0.0, device=self.device).expand(len(idx), 25),
                             truncation_psi=d["synthetic_truncation"])
            img = G.render_planes(G.synthesize_planes(ws_c), ws_c, c, deterministic=True)["image"].clamp(-1, 1)
        r = self.encoder.config.img_size
        x_enc = torch.nn.functional.interpolate(img, size=(r, r), mode="bicubic", align_corners=False, antialias=True)
        return {"x": img, "x_enc": x_enc, "c": c, "ws": ws_c}

    def train_step(self) -> dict[str, float]:
        cfg, t = self.cfg, self.cfg["train"]
        world, rank, accum = self.dist.world, self.dist.rank, t["accum_steps"]
        torch.manual_seed(D._mix(cfg["seed"], self.step, rank))  # dropout etc.: reproducible on resume
        n_syn = cfg["data"]["synthetic_per_batch"] if self.stage == "encoder" else 0
        items = D.stream_indices(len(self.dataset), cfg["seed"], self.position, t["batch_size"])
        self.trained.train(t["module_mode"] == "train")
        self.opt.zero_grad(set_to_none=True)
        if self.disc is not None:
            self.d_opt.zero_grad(set_to_none=True)
        logs: dict[str, float] = {}
        blur = None
        if self.stage == "afa":
            lo, hi = self.scfg["mask_blur_sigma"]
            blur = lo + (hi - lo) * float(torch.rand(1, generator=D.step_generator(cfg["seed"], self.step, 0xB1)))
        for micro in range(accum):
            part = D.rank_slice(t["batch_size"], rank, world, micro, accum)
            batch = D.load_batch(self.dataset, items[part], self.encoder.config.img_size, self.device)
            syn = self._synthetic(D.rank_slice(n_syn, rank, world, micro, accum)) if n_syn else None
            sync = micro == accum - 1
            with (nullcontext() if sync or world == 1 else self.ddp.no_sync()):
                loss, parts, fake_ws = self._loss(batch, syn, blur)
                self.scaler.scale(loss / accum).backward()
            for k, v in parts.items():
                logs[k] = logs.get(k, 0.0) + v / accum
            if self.disc is not None and self.scfg["lambda_adv"] > 0:
                self._disc_backward(fake_ws, micro, accum, logs)
        if t["grad_clip"] > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.trained.parameters(), t["grad_clip"])
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.disc is not None and self.scfg["lambda_adv"] > 0:
            # R1 needs a double backward, outside DDP's one-backward contract: average D's grads by hand.
            if world > 1:
                for p in self.disc.parameters():
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= world
            self.d_opt.step()
        self.position += t["batch_size"]
        self.step += 1
        return logs

    def _loss(self, batch, syn, blur) -> tuple[torch.Tensor, dict[str, float], torch.Tensor | None]:
        s = self.scfg
        n_real = batch["x"].shape[0]
        x = batch["x"] if syn is None else torch.cat([batch["x"], syn["x"]])
        x_enc = batch["x_enc"] if syn is None else torch.cat([batch["x_enc"], syn["x_enc"]])
        c = batch["c"] if syn is None else torch.cat([batch["c"], syn["c"]])
        # The stage runs its network passes under self._autocast and renders in fp32 (goae.models.goae).
        if self.stage == "encoder":
            stage = progressive_stage(self.step, s["progressive_start"], s["progressive_every"])
            out = self.ddp(x_enc, c, stage)
        else:
            out = self.ddp(x, x_enc, c, blur)
        rec = self._recon_losses(out["rgb"], x)
        total = s["lambda_l2"] * rec["l2"].mean() + s["lambda_lpips"] * rec["lpips"].mean() + s["lambda_id"] * rec["id"].mean()
        parts = {"l2": rec["l2"][:n_real].mean().item(), "lpips": rec["lpips"][:n_real].mean().item(),
                 "id": rec["id"][:n_real].mean().item()}
        fake_ws = None
        if self.stage == "encoder":
            ws = out["ws"].float()
            delta = out["delta"].float().norm(dim=-1).sum(1).mean()
            total = total + s["lambda_delta"] * delta
            parts["delta"] = delta.item()
            if syn is not None:
                latent = (ws[n_real:] - syn["ws"]).pow(2).mean()
                total = total + s["lambda_latent"] * latent
                parts["latent"] = latent.item()
            if s["lambda_depth"] > 0:
                with torch.no_grad():
                    n = c.shape[0]
                    ref = self.G.render_planes(self.planes_avg.expand(n, -1, -1, -1), self.ws_avg.expand(n, -1, -1), c,
                                               neural_rendering_resolution=self.cfg["train"]["neural_rendering_resolution"],
                                               deterministic=True, superresolution=False)["image_depth"]
                depth = background_depth_loss(out["image_depth"].float(), ref, s["depth_margin"]).mean()
                total = total + s["lambda_depth"] * depth
                parts["depth"] = depth.item()
            if s["lambda_adv"] > 0:
                from train.discriminator import generator_adv_loss

                self.disc.requires_grad_(False)
                adv = generator_adv_loss(self.disc(ws.reshape(-1, ws.shape[-1])))
                self.disc.requires_grad_(True)
                total = total + s["lambda_adv"] * adv
                parts["adv"] = adv.item()
            fake_ws = ws.detach()
        parts["loss"] = total.item()
        return total, parts, fake_ws

    def _disc_backward(self, fake_ws: torch.Tensor, micro: int, accum: int, logs: dict) -> None:
        """Canonical latent discriminator: real = mapping(z, canonical camera) of the frozen G; fake = every
        W+ row the encoder produced. Non-saturating logistic loss, lazy R1 on the reals (e4e)."""
        from train.discriminator import discriminator_loss, r1_penalty

        s, G = self.scfg, self.G
        n = fake_ws.shape[0]
        total = self.cfg["train"]["batch_size"] + (self.cfg["data"]["synthetic_per_batch"])
        part = D.rank_slice(total, self.dist.rank, self.dist.world, micro, accum)
        z, _, _ = D.synthetic_codes(self.cfg["seed"] + 7, self.step, range(part.start, part.stop), G.z_dim, 0.0, 0.0)
        with torch.no_grad():
            real_w = G.mapping(z.to(self.device), camera_label(0.0, 0.0, device=self.device).expand(len(z), 25))[:, 0]
        assert real_w.shape[0] == n, (real_w.shape, n)
        do_r1 = s["d_reg_every"] > 0 and self.step % s["d_reg_every"] == 0
        real_w.requires_grad_(do_r1)
        real_logits = self.disc(real_w)
        loss = discriminator_loss(real_logits, self.disc(fake_ws.reshape(-1, fake_ws.shape[-1])))
        logs["d_loss"] = logs.get("d_loss", 0.0) + loss.item() / accum
        if do_r1:
            r1 = r1_penalty(real_logits, real_w)
            loss = loss + s["d_r1_gamma"] / 2 * r1 * s["d_reg_every"]
            logs["r1"] = logs.get("r1", 0.0) + r1.item() / accum
        (loss / accum).backward()

    # -- outputs ----------------------------------------------------------------------------------
    def pipeline(self):
        from goae.pipeline import GOAEPipeline

        m = self.cfg["model"]
        return GOAEPipeline(generator=self.G, encoder=self.encoder, afa=self.afa, afa_resolution=m["afa_resolution"],
                            mask_blur_sigma=m["mask_blur_sigma"], mask_threshold=m["mask_threshold"], deterministic=True)

    @torch.no_grad()
    def sample_grid(self, path: Path, count: int = 4) -> None:
        """input | W reconstruction | final | novel view (yaw +0.5), one row per photo, through GOAEPipeline."""
        was = self.trained.training
        self.encoder.eval(), self.afa.eval()
        idx = list(range(min(count, self.dataset.num_images)))
        batch = D.load_batch(self.dataset, idx, self.encoder.config.img_size, self.device)
        pipe = self.pipeline()
        out = pipe(batch["x"], batch["c"], return_intermediates=True)
        novel = pipe.render_view(out, camera_label(torch.full((len(idx),), 0.5), torch.zeros(len(idx)), device=self.device))
        tiles = [batch["x"], out.intermediates["render_w.image"], out.image, novel["image"]]
        grid = torch.cat([torch.cat([resize(t_[i:i + 1], 128) for t_ in tiles], dim=3) for i in range(len(idx))], dim=2)
        arr = ((grid[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp)
        self.trained.train(was)

    def save_final(self) -> None:
        self.encoder.eval(), self.afa.eval()
        with atomic_dir(self.final_dir, overwrite=True) as tmp:
            self.pipeline().save_pretrained(str(tmp))

    # -- loop -------------------------------------------------------------------------------------
    def fit(self, resume: bool) -> None:
        cfg, log_cfg, main = self.cfg, self.cfg["log"], self.dist.main
        if resume and (ckpt := find_latest(self.run_dir)) is not None:
            self.load_state(load_checkpoint(ckpt), ckpt)
            if main:
                _truncate_log(self.run_dir / "log.jsonl", self.step)
                print(f"resumed {self.stage} from {ckpt} at step {self.step}", file=sys.stderr)
        elif find_latest(self.run_dir) is not None:
            raise ConfigError(f"{self.run_dir} already holds checkpoints; pass --resume to continue it or use another --out")
        max_steps = self.scfg["max_steps"]
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=self.step, desc=f"goae {self.stage}", unit="step", dynamic_ncols=True,
                   disable=not (main and log_cfg["progress"]), mininterval=1.0)
        log_file = self.run_dir / "log.jsonl"
        while self.step < max_steps:
            t0 = time.perf_counter()
            parts = self.dist.mean(self.train_step())
            dt = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{parts.get('loss', 0):.4f}", refresh=False)
            if main and (self.step % log_cfg["every"] == 0 or self.step == max_steps):
                rec = {"step": self.step, "stage": self.stage, "epoch": round(self.position / len(self.dataset), 3),
                       "lr": self.opt.param_groups[0]["lr"], "sec_per_step": round(dt, 4), **parts}
                with open(log_file, "a") as f:
                    f.write(json.dumps(rec) + "\n")
            if main and log_cfg["sample_every"] and self.step % log_cfg["sample_every"] == 0:
                self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
            if self.step % log_cfg["ckpt_every"] == 0 or self.step == max_steps:
                self.dist.barrier()
                if main:
                    save_checkpoint(self.run_dir, self.step, self.state(), log_cfg["keep"])
                self.dist.barrier()
        bar.close()
        if main:
            self.save_final()
        self.dist.barrier()


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (the killed run got further)."""
    if not path.is_file():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(ln + "\n" for ln in keep))


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Train GOAE (encoder, then AFA) on an EG3D dataset folder.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Options:")[0])
    p.add_argument("--config", default=str(Path(__file__).resolve().parent / "configs" / "goae_ffhq.yaml"))
    p.add_argument("--data", help="EG3D dataset folder (images + dataset.json)")
    p.add_argument("--labels", help="labels file name inside --data (default dataset.json)")
    p.add_argument("--out", required=True, help="run folder (log, samples, checkpoints, final/)")
    p.add_argument("--stage", choices=("encoder", "afa", "all"))
    p.add_argument("--init", help="GOAEPipeline folder to start from (e.g. the encoder stage's final/)")
    p.add_argument("--max-steps", type=int, help="optimiser steps per stage")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--accum-steps", type=int)
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--seed", type=int)
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override any config key")
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> dict:
    extra: dict = {}
    put = lambda sec, key, v: v is not None and extra.setdefault(sec, {}).__setitem__(key, v)
    put("data", "path", args.data)
    put("data", "labels", args.labels)
    put("model", "init", args.init)
    put("train", "batch_size", args.batch_size)
    put("train", "accum_steps", args.accum_steps)
    put("train", "precision", args.precision)
    if args.max_steps is not None:
        extra["encoder_stage"] = {"max_steps": args.max_steps}
        extra["afa_stage"] = {"max_steps": args.max_steps}
    if args.stage:
        extra["stage"] = args.stage
    if args.seed is not None:
        extra["seed"] = args.seed
    cfg = load_config(args.config, args.set, extra=extra)
    if not cfg["data"]["path"]:
        raise ConfigError("no training data: pass --data DIR (an EG3D dataset folder) or set data.path")
    return cfg


def main(argv=None) -> int:
    import train.losses as L

    weight_errors = (L.MissingWeightsError, getattr(L, "WeightsFileError", L.MissingWeightsError))  # name the file
    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        d = Dist(cfg["train"]["device"])
        out = Path(args.out)
        if cfg["stage"] == "all":
            plan = [("encoder", out / "encoder", out / "encoder" / "final", cfg),
                    ("afa", out / "afa", out / "final", {**cfg, "model": {**cfg["model"], "init": str(out / "encoder" / "final")}})]
        else:
            plan = [(cfg["stage"], out, out / "final", cfg)]
        for stage, run_dir, final_dir, stage_cfg in plan:
            if cfg["stage"] == "all" and stage == "encoder" and args.resume and final_dir.is_dir():
                continue  # the encoder stage of this run already finished
            Trainer(stage_cfg, stage, run_dir, final_dir, d).fit(args.resume)
    except (ConfigError, D.DatasetError, CheckpointError, *weight_errors) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
