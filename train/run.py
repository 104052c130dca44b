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
    # cats: AFHQv2 cats in EG3D's layout (mirrored copies included) and the converted afhqcats512-128 generator
    # (a bare generator folder needs --domain cat; a cat pipeline folder says so itself), or the tiny cat config:
    python train/run.py --config train/configs/goae_afhqcats.yaml --data /data/afhqcats512 --out runs/goae-cat \
        --set model.generator=weights/eg3d-afhqcats512 ...
    python train/run.py --config train/configs/tiny_cat.yaml --data DIR --out DIR --max-steps 20
    # continue a killed run where its last checkpoint stopped (a damaged newest checkpoint is skipped for the
    # one before it; a half-written log line and the temporaries of interrupted writes are cleaned up):
    python train/run.py ...same arguments... --resume

Options: --stage encoder|afa|all, --init PIPELINE_DIR (start the afa stage from an encoder result),
--domain human|cat (model.domain: the generator's domain, goae.domains; default: what the generator folder
or preset records, human for a bare generator folder),
--max-steps N (per stage), --batch-size, --accum-steps, --precision fp32|bf16|fp16, --seed,
--set key.sub=value (any key of train/configs/goae_ffhq.yaml; unknown keys are an error), e.g.
--set data.workers=N (image-decoding processes; 0 = in the training process).

The loop is the same for every stage; what a stage trains, its losses and extra networks live in
train/stages.py (`STAGES`, in run order for `--stage all`).

Output (`--out DIR`; with stage `all` the encoder run lives in DIR/encoder and the afa run in DIR/afa):
    log.jsonl                 losses, learning rate and seconds per step (rank 0)
    samples/step_XXXXXXX.png  input | W reconstruction | final | novel view
    checkpoints/step_XXXXXXX.pt + latest
    final/                    a GOAEPipeline folder (GOAEPipeline.from_pretrained(DIR/final)), its `domain` in
                              model_index.json and in its model card (README.md)
"""
from __future__ import annotations

import argparse
import copy
import datetime
import errno
import json
import math
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

from goae.domains import DOMAINS  # noqa: E402
from goae.io import atomic_dir, atomic_path, atomic_write_bytes  # noqa: E402
from goae.runtime import set_tf32  # noqa: E402
from train import data as D  # noqa: E402
from train.checkpoint import (CheckpointError, candidates, load_latest, remove_stale_temps, rng_state,  # noqa: E402
                              save_checkpoint, set_rng_state, warn)
from train.config import ConfigError, check_domain, check_partition, load_config, resolve_domain  # noqa: E402
from train.optim import make_optimizer, make_scheduler  # noqa: E402
from train.stages import STAGES, HeldOutEval, resize  # noqa: E402


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
        set_tf32(False)   # official EG3D training: TF32 off for matmuls and cuDNN convolutions (accuracy)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def stack(self, values: dict) -> torch.Tensor:
        """Numbers or 0-dim tensors -> one float64 tensor on this rank's device (nccl reduces only device tensors)."""
        return torch.stack([torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in values.values()])

    def mean(self, values: dict) -> dict[str, float]:
        """Average over the ranks: one all-reduce, then one copy to the host (the step's only sync for its logs)."""
        if not values:
            return {}
        t = self.stack(values)
        if dist.is_initialized():
            dist.all_reduce(t)
            t /= dist.get_world_size()
        return dict(zip(values, t.tolist()))

    def all_ok(self, ok: bool) -> bool:
        """True when every rank is ok: a rank that failed (rank 0's disk full) stops all, none waits forever."""
        if not dist.is_initialized():
            return ok
        t = torch.tensor([float(ok)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return bool(t.item())


def build_models(cfg: dict, device, strict_init_domain: bool = True) -> tuple:
    """(generator, encoder, afa): frozen G from a folder or preset; encoder/AFA from model.init or new.
    A pipeline folder given as model.generator must be of the run's domain (model.domain). So must the
    model.init folder when `strict_init_domain` (a stage that keeps the init encoder frozen); otherwise an
    init of another domain is only a warning (the encoder stage may start from another domain's encoder)."""
    from goae.models.afa import AFA
    from goae.models.eg3d import EG3DGenerator
    from goae.models.encoder import GOAEncoder
    from goae.pipeline import GOAEPipeline
    from goae.presets import preset

    m = cfg["model"]
    domain = resolve_domain(m)  # a config not made by load_config: resolved (and checked) here
    torch.manual_seed(cfg["seed"])
    enc_kw, afa_kw = {}, {}
    if m["preset"] is not None:
        G = GOAEPipeline.from_preset(m["preset"], seed=cfg["seed"]).generator
        enc_kw, afa_kw = dict(preset(m["preset"]).encoder), dict(preset(m["preset"]).afa)
    else:
        folder = Path(m["generator"])
        if not folder.is_dir():
            raise ConfigError(f"model.generator {folder} is not a folder (an EG3D generator or GOAE pipeline folder "
                              f"from `goae convert`)")
        if (folder / "model_index.json").is_file():
            pipe = GOAEPipeline.from_pretrained(str(folder), low_cpu_mem_usage=False)
            check_domain(domain, pipe.config.domain, f"model.generator {folder}")
            G = pipe.generator
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
        try:
            check_domain(domain, init.config.domain, f"model.init {m['init']}")
        except ConfigError as e:
            if strict_init_domain:
                raise
            warn(f"{e}; this stage trains the encoder, and starts from that one anyway")
        encoder = init.encoder
        if dict(init.afa.config)["feature_resolution"] == res:
            afa = init.afa
    return G, encoder.to(device), afa.to(device)


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    """The loop, the same for every stage: data, optimiser, precision, DDP, logs, samples, checkpoints."""

    def __init__(self, cfg: dict, stage: str, run_dir: Path, final_dir: Path, dist_: Dist):
        self.cfg, self.run_dir, self.final_dir, self.dist = cfg, run_dir, final_dir, dist_
        self.scfg, t, dev = cfg[f"{stage}_stage"], cfg["train"], dist_.device
        self.device = dev
        check_partition(cfg, dist_.world)
        if t["precision"] == "fp16" and dev.type != "cuda":
            raise ConfigError("train.precision=fp16 needs CUDA (use bf16 on CPU)")
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[t["precision"]]
        self.dataset = D.EG3DDataset(cfg["data"]["path"], cfg["data"]["labels"], xflip=cfg["data"]["xflip"])  # fail fast
        self.domain = resolve_domain(cfg["model"])  # goae.domains name: cameras, sample views, the final folder
        self.G, self.encoder, self.afa = build_models(cfg, dev, STAGES[stage].frozen_encoder)
        self.dataset.resolution, self.dataset.enc_resolution = self.G.img_resolution, self.encoder.config.img_size
        self.stage = STAGES[stage](cfg, self.G, self.encoder, self.afa, dist_, self._autocast)
        self.opt = make_optimizer(self.scfg["optimizer"], self.stage.trained.parameters(), self.scfg["lr"])
        self.sched = make_scheduler(self.opt, self.scfg["scheduler"], self.scfg["warmup_steps"], self.scfg["max_steps"])
        self.scaler = torch.amp.GradScaler(dev.type, enabled=t["precision"] == "fp16")
        self.ddp = self.stage
        if dist_.world > 1 and dev.type == "cuda" and t["module_mode"] == "train":
            nn.SyncBatchNorm.convert_sync_batchnorm(self.stage)  # AFA's batch statistics over the global batch
        if dist_.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.ddp = DDP(self.stage, device_ids=[dev] if dev.type == "cuda" else None, broadcast_buffers=False,
                           find_unused_parameters=self.stage.find_unused_parameters)
        self.step, self.position = 0, 0
        self.held_out = HeldOutEval(cfg, dev) if HeldOutEval.wanted(cfg) and dist_.main else None  # eval section

    # -- state ------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"stage": self.stage.name, "step": self.step, "data_position": self.position, "config": self.cfg,
                "model": self.stage.trained.state_dict(), "optimizer": self.opt.state_dict(),
                "scheduler": self.sched.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
                **self.stage.extra_state()}

    def load_state(self, s: dict, path: Path) -> None:
        if s.get("stage") != self.stage.name:
            raise ConfigError(f"checkpoint {path} is of stage {s.get('stage')!r}, this run trains {self.stage.name!r}")
        model_cfg = (s.get("config") or {}).get("model") or {}
        saved_domain = model_cfg.get("domain") or "human"  # checkpoints from before domains trained humans
        if saved_domain != self.domain:
            raise ConfigError(f"checkpoint {path} trains the {saved_domain!r} domain, this run the {self.domain!r} one "
                              f"(model.domain): resume it with its own generator and config, or use another --out")
        try:
            self.stage.trained.load_state_dict(s["model"])
            self.opt.load_state_dict(s["optimizer"])
            self.sched.load_state_dict(s["scheduler"])
            self.scaler.load_state_dict(s["scaler"])
            self.stage.load_extra_state(s)
            set_rng_state(s["rng"])
            self.step, self.position = int(s["step"]), int(s["data_position"])
        except KeyError as e:
            raise CheckpointError(f"checkpoint {path} has no entry {e}: not a checkpoint of this trainer") from None
        saved = copy.deepcopy(s.get("config") or {})
        if isinstance(saved.get("model"), dict):  # checkpoints from before domains trained humans
            saved["model"].setdefault("domain", "human")
        changed = [k for k in self.cfg if saved.get(k) != self.cfg[k]]
        if changed and self.dist.main:  # allowed (e.g. more steps), but the run is no longer one uninterrupted run
            warn(f"resuming {path} with a changed config (sections {changed})")

    # -- one optimiser step -----------------------------------------------------------------------
    def _autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loader(self, steps: int):
        """This rank's micro-batches of the next `steps` optimiser steps, decoded by DataLoader workers."""
        t, d = self.cfg["train"], self.dist
        order = D.StepBatches(len(self.dataset), self.cfg["seed"], self.position, t["batch_size"], d.rank, d.world,
                              t["accum_steps"], steps)
        return D.micro_batches(self.dataset, order, self.cfg["data"]["workers"], pin_memory=self.device.type == "cuda")

    def train_step(self, batches) -> dict[str, torch.Tensor]:
        """One optimiser step on the next micro-batches of `batches` -> the step's logs (tensors, not synced)."""
        cfg, t = self.cfg, self.cfg["train"]
        world, accum = self.dist.world, t["accum_steps"]
        torch.manual_seed(D._mix(cfg["seed"], self.step, self.dist.rank))  # dropout etc.: reproducible on resume
        self.stage.trained.train(t["module_mode"] == "train")
        self.opt.zero_grad(set_to_none=True)
        logs: dict[str, torch.Tensor] = {}
        for micro in range(accum):
            batch = D.to_device(*next(batches), self.device)
            with (nullcontext() if micro == accum - 1 or world == 1 else self.ddp.no_sync()):
                loss, parts, aux = self.ddp(batch, self.step, micro)
                self.scaler.scale(loss / accum).backward()
            parts.update(self.stage.after_backward(aux, self.step, micro))
            for k, v in parts.items():
                logs[k] = logs.get(k, 0) + v.double() / accum
        if t["grad_clip"] > 0:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.stage.trained.parameters(), t["grad_clip"])
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        self.stage.after_step()
        self.position += t["batch_size"]
        self.step += 1
        return logs

    # -- outputs ----------------------------------------------------------------------------------
    def pipeline(self):
        from goae.pipeline import GOAEPipeline

        m = self.cfg["model"]
        return GOAEPipeline(generator=self.G, encoder=self.encoder, afa=self.afa, afa_resolution=m["afa_resolution"],
                            mask_blur_sigma=m["mask_blur_sigma"], mask_threshold=m["mask_threshold"], deterministic=True,
                            domain=self.domain)

    @torch.no_grad()
    def sample_grid(self, path: Path, count: int = 4) -> None:
        """input | W reconstruction | final | novel view (yaw +0.5 rad around the generator's pivot: (0, 0, 0.2) for
        FFHQ, (0, 0, -0.06) for AFHQ cats), one row per photo, through GOAEPipeline."""
        was = self.stage.trained.training
        self.encoder.eval(), self.afa.eval()
        idx = list(range(min(count, self.dataset.num_images)))
        batch = D.load_batch(self.dataset, idx, self.encoder.config.img_size, self.device)
        pipe = self.pipeline()
        out = pipe(batch["x"], batch["c"], return_intermediates=True)
        novel = pipe.render_view(out, pipe.view_camera([math.degrees(0.5)] * len(idx), 0.0).to(self.device))
        tiles = [batch["x"], out.intermediates["render_w.image"], out.image, novel["image"]]
        grid = torch.cat([torch.cat([resize(t_[i:i + 1], 128) for t_ in tiles], dim=3) for i in range(len(idx))], dim=2)
        arr = ((grid[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(arr)).save(tmp)
        self.stage.trained.train(was)

    def save_final(self) -> None:
        self.encoder.eval(), self.afa.eval()
        from goae.weights.cards import Provenance, current_command

        pipe = self.pipeline()
        pipe.provenance = Provenance(command=current_command(), note=f"trained by train/run.py, stage {self.stage.name}, "
                                     f"{self.step} steps, generator {self.cfg['model']['generator'] or self.cfg['model']['preset']}, "
                                     f"domain {self.domain}", domain=self.domain,
                                     evaluation=self.held_out.last if self.held_out else None)
        with atomic_dir(self.final_dir, overwrite=True) as tmp:
            pipe.save_pretrained(str(tmp), repo_hint=str(self.final_dir))  # with its model card (usage: the real path)

    # -- loop -------------------------------------------------------------------------------------
    def fit(self, resume: bool) -> None:
        cfg, log_cfg, main, name = self.cfg, self.cfg["log"], self.dist.main, self.stage.name
        log_file, max_steps = self.run_dir / "log.jsonl", self.scfg["max_steps"]
        if main:  # what a killed write left behind: hidden temporaries, possibly checkpoint-sized
            count, size = remove_stale_temps(self.run_dir, self.run_dir / "checkpoints", self.run_dir / "samples",
                                             self.final_dir.parent)
            if count:
                print(f"removed {count} temporary file(s) ({size / 2**20:.1f} MiB) left by an interrupted run", file=sys.stderr)
        found = load_latest(self.run_dir) if resume else None
        if found is not None:
            self.load_state(found[1], found[0])
            if main:
                print(f"resumed {name} from {found[0]} at step {self.step}", file=sys.stderr)
        elif not resume and candidates(self.run_dir):
            raise ConfigError(f"{self.run_dir} already holds checkpoints; pass --resume to continue it or use another --out")
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            truncate_log(log_file, self.step)  # lines past the checkpoint (all of them when starting at 0)
            atomic_write_bytes(self.run_dir / "config.json", json.dumps(cfg, indent=2).encode())
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, initial=self.step, desc=f"goae {name}", unit="step", dynamic_ncols=True,
                   disable=not (main and log_cfg["progress"]), mininterval=1.0)
        batches = self.loader(max_steps - self.step)
        while self.step < max_steps:
            t0 = time.perf_counter()
            parts = self.dist.mean(self.train_step(batches))
            dt = time.perf_counter() - t0
            bar.update(1)
            bar.set_postfix(loss=f"{parts.get('loss', 0):.4f}", refresh=False)
            due = self.outputs_due()
            if any(due.values()):
                self.on_main(lambda: self.write_outputs(due, log_file, parts, dt))
        bar.close()
        self.on_main(self.save_final)

    def on_main(self, write) -> None:
        """Rank 0 writes; every rank learns whether it could: a failure there (a full disk) stops all of them
        instead of leaving the others waiting in the next collective."""
        error = None
        if self.dist.main:
            try:
                write()
            except Exception as e:
                error = e
        if not self.dist.all_ok(error is None):
            raise error or CheckpointError("rank 0 could not write the run's outputs (see its error)")

    def outputs_due(self) -> dict[str, bool]:
        """Which of rank 0's outputs this step writes (log.* says)."""
        log_cfg, step, last = self.cfg["log"], self.step, self.step == self.scfg["max_steps"]
        ev = self.held_out is not None and self.held_out.due(step, last)  # metrics go into that step's log line
        return {"log": step % log_cfg["every"] == 0 or last or ev, "ckpt": step % log_cfg["ckpt_every"] == 0 or last,
                "sample": bool(log_cfg["sample_every"]) and step % log_cfg["sample_every"] == 0, "eval": ev}

    def write_outputs(self, due: dict[str, bool], log_file: Path, parts: dict[str, float], dt: float) -> None:
        if due.get("eval"):
            parts = {**parts, **self.held_out.run(self.pipeline(), (self.encoder, self.afa), self.step)}
            self.held_out.keep_best(self.run_dir, self.state)
        if due["log"]:
            rec = {"step": self.step, "stage": self.stage.name, "epoch": round(self.position / len(self.dataset), 3),
                   "lr": self.opt.param_groups[0]["lr"], "sec_per_step": round(dt, 4), **parts}
            append_line(log_file, json.dumps(rec))
        if due["sample"]:
            self.sample_grid(self.run_dir / "samples" / f"step_{self.step:07d}.png")
        if due["ckpt"]:
            save_checkpoint(self.run_dir, self.step, self.state(), self.cfg["log"]["keep"])


def append_line(path: Path, line: str) -> None:
    """Append one line, all of it or nothing (a full disk must not leave half a JSON line)."""
    data = (line + "\n").encode()
    with open(path, "ab", buffering=0) as f:
        start = os.fstat(f.fileno()).st_size
        try:
            view = memoryview(data)
            while view:
                view = view[f.write(view):]
        except OSError:
            os.ftruncate(f.fileno(), start)
            raise


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps <= `step` (a killed run got further than its checkpoint; a run that starts
    again at 0 starts a new log). Lines that do not parse, e.g. one half-written when the run was killed, go too."""
    if not path.is_file():
        return
    keep, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
            if rec["step"] <= step:
                keep.append(line)
        except (ValueError, TypeError, KeyError):
            bad += line.strip() != ""
    if bad:
        warn(f"dropped {bad} unreadable line(s) of {path} (written when the run was interrupted?)")
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
    p.add_argument("--domain", choices=sorted(DOMAINS),
                   help="model.domain (default: the generator folder's or preset's; human for a bare generator)")
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
    put("model", "domain", args.domain)
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


def disk_full(e: BaseException | None) -> bool:
    """OSError ENOSPC/EDQUOT, or a library's error that wraps one (safetensors, torch), anywhere in the chain."""
    while e is not None:
        if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def main(argv=None) -> int:
    import train.losses as L

    args = parse_args(argv)
    try:
        cfg = config_from_args(args)
        d = Dist(cfg["train"]["device"])
        out, names = Path(args.out), list(STAGES) if cfg["stage"] == "all" else [cfg["stage"]]
        stage_cfg = cfg
        for i, name in enumerate(names):  # `all`: DIR/<stage> each, every stage starting from the last one's final/
            last = i == len(names) - 1
            run_dir = out / name if len(names) > 1 else out
            final_dir = out / "final" if last else run_dir / "final"
            if last or not (args.resume and final_dir.is_dir()):  # an earlier stage that finished is not run again
                Trainer(stage_cfg, name, run_dir, final_dir, d).fit(args.resume)
            stage_cfg = {**cfg, "model": {**cfg["model"], "init": str(final_dir)}}
    except (ConfigError, D.DatasetError, CheckpointError, L.MissingWeightsError, L.WeightsFileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not disk_full(e):
            raise
        print(f"error: no space left on the device of {args.out} ({e}); free space or use another --out "
              f"(nothing half-written was kept: --resume continues from the last checkpoint)", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
