"""The training stages of GOAE. Each stage owns what it trains and how: its trainable module (its only
child, so DistributedDataParallel wraps exactly that), its losses, its per-step policy (synthetic
samples, progressive rows, mask blur), any extra network with its own optimiser, and which of those go
into checkpoints. The loop in train/run.py knows none of it; `STAGES` names the stages in run order.

    encoder: encode into the canonical latent space -> synthesize -> render (W reconstruction); image losses,
             delta norm, latent loss on generator samples, background depth, canonical latent discriminator
    afa:     the whole GOAE forward (encode -> ... -> refine -> fuse -> render), encoder frozen; image losses

What the trainer calls:
    trained, find_unused_parameters       the module it optimises, and a DDP setting
    frozen_encoder                        whether it keeps the model.init encoder frozen (its domain must match)
    forward(batch, step, micro)           -> (loss, logs, aux), under DDP; logs: name -> 0-dim tensor
    after_backward(aux, step, micro)      -> logs; after each micro-step's backward (the discriminator)
    after_step()                          after the optimiser step
    extra_state() / load_extra_state(s)   checkpoint entries besides model / optimiser / scheduler

Both run the one GOAE forward (`goae.models.goae.GOAE`) with autograd: network passes under the
trainer's autocast, volume rendering in fp32. The frozen generator is held outside the module tree.

Domain (model.domain, goae.domains). The cameras a stage makes are built like the dataset's labels of
that domain: synthetic samples sit at radius 2.7 from `domain.label_lookat` and look at it (FFHQ: EG3D's
pivot (0, 0, 0.2); AFHQ cats: the origin, translation = -2.7 * forward), and the mapping network is
conditioned on that domain's frontal camera (`domain.input_camera(0, 0)`, what inference feeds it too).
"""
from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from goae.camera import camera_label
from goae.domains import get_domain
from goae.eval.metrics import finite_mean, higher_is_better
from goae.eval.runner import load_networks, measure_batch
from goae.models.encoder import STAGES as ROW_GROUPS
from goae.models.goae import GOAE, resize
from train import data as D
from train.config import ConfigError


def progressive_stage(step: int, start: int, every: int) -> str:
    """e4e's progressive schedule mapped onto the GOAE encoder's row groups: base code only until
    `start`, then coarse, mid and fine deltas switch on every `every` steps (every = 0: all at once)."""
    if step < start:
        return ROW_GROUPS[0]
    return ROW_GROUPS[3] if every <= 0 else ROW_GROUPS[min(3, 1 + (step - start) // every)]


def background_depth_loss(depth: torch.Tensor, depth_ref: torch.Tensor, margin: float = 0.0) -> torch.Tensor:
    """Background depth regularisation (paper §3): the encoder must not pull the background forward
    onto the head (the thin "billboard" shape a 2D-fitting code gives). Background = pixels where the
    mean face (w_avg), rendered at the same camera, sees its far background (deeper than the midpoint
    of its depth range); there the reconstruction's depth may not come closer than the mean face's
    minus `margin`. Squared hinge, mean over background pixels, per sample -> [N]."""
    flat_ref, flat = depth_ref.flatten(1), depth.flatten(1)
    lo, hi = flat_ref.amin(1, keepdim=True), flat_ref.amax(1, keepdim=True)
    bg = (flat_ref > (lo + hi) / 2).to(flat.dtype)
    gap = F.relu(flat_ref - margin - flat) * bg
    return gap.pow(2).sum(1) / bg.sum(1).clamp(min=1)


class ReconstructionLoss:
    """pSp/e4e image losses at train.loss_resolution: lambda_l2 MSE + lambda_lpips LPIPS + lambda_id identity,
    on (output, input) pairs. The LPIPS / identity nets are frozen and not built when their weight is 0."""

    def __init__(self, cfg: dict, stage: str, device):
        from train.losses import IDLoss, LPIPS

        c, s = cfg["losses"], cfg[f"{stage}_stage"]
        self.weights, self.resolution = {k: s[f"lambda_{k}"] for k in ("l2", "lpips", "id")}, cfg["train"]["loss_resolution"]
        for name, paths in (("lpips", ("lpips_vgg16", "lpips_lin")), ("id", ("id_weights",))):
            missing = [k for k in paths if not c[k]]
            if c[name] == "pretrained" and self.weights[name] > 0 and missing:
                raise ConfigError(f"losses.{name}=pretrained needs the weight file(s) {', '.join('losses.' + k for k in missing)} "
                                  f"(vgg16-397923af.pth from torchvision, lpips' weights/v0.1/vgg.pth, pSp's model_ir_se50.pth); "
                                  f"losses.{name}=random is for tests only")
        torch.manual_seed(cfg["seed"] + 2)  # random-weight nets must be the same in every process and run
        self.lpips = self.id = None
        if self.weights["lpips"] > 0:
            self.lpips = LPIPS() if c["lpips"] == "random" else LPIPS.from_pretrained(c["lpips_vgg16"], c["lpips_lin"])
            self.lpips = self.lpips.to(device).eval().requires_grad_(False)
        if self.weights["id"] > 0:
            self.id = IDLoss() if c["id"] == "random" else IDLoss.from_pretrained(c["id_weights"])
            self.id = self.id.to(device).eval().requires_grad_(False)

    def __call__(self, rgb: torch.Tensor, x: torch.Tensor, n_real: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """-> (weighted sum over the batch, per-loss means over the first n_real samples (the photos) for the log)."""
        y_hat, y = resize(rgb.float(), self.resolution), resize(x, self.resolution)
        zero = y_hat.new_zeros(y_hat.shape[0])
        per = {"l2": (y_hat - y).pow(2).flatten(1).mean(1),
               "lpips": self.lpips(y_hat, y).reshape(-1) if self.lpips is not None else zero,
               "id": self.id(y_hat, y).reshape(-1) if self.id is not None else zero}
        total = sum(self.weights[k] * v.mean() for k, v in per.items())
        return total, {k: v[:n_real].mean().detach() for k, v in per.items()}


class Stage(nn.Module):
    """What the stages share: the GOAE forward, the reconstruction losses, the no-op hooks."""

    name = ""
    find_unused_parameters = False
    frozen_encoder = False  # True: the model.init encoder is used as it is (so it must be of the run's domain)

    def __init__(self, cfg: dict, G, encoder, afa, dist_, autocast):
        super().__init__()
        self.cfg, self.s, self.dist, t = cfg, cfg[f"{self.name}_stage"], dist_, cfg["train"]
        self.domain = get_domain(cfg["model"].get("domain"))  # None (a config from before domains): human
        self.sr = t["render"] == "sr"  # losses on the super-resolved image, or on the neural rendering
        # fp16 keeps the EG3D tri-plane synthesis fp32, as the official code runs it (no conv clamp there)
        backbone = contextlib.nullcontext if t["precision"] == "fp16" else autocast
        self.method = GOAE(G, encoder, afa, afa_resolution=cfg["model"]["afa_resolution"], deterministic=True,
                           mask_threshold=cfg["model"]["mask_threshold"], autocast=autocast,
                           backbone_autocast=backbone, neural_rendering_resolution=t["neural_rendering_resolution"])
        self.recon = ReconstructionLoss(cfg, self.name, dist_.device)

    @property
    def G(self):  # the frozen generator, held by the GOAE forward (not a child)
        return self.method.generator

    def rgb(self, render) -> torch.Tensor:
        return render.image if self.sr else render.image_raw

    def label_cameras(self, yaw, pitch) -> torch.Tensor:
        """[N, 25] cameras at (yaw, pitch) radians from frontal, built like this domain's dataset labels: radius
        2.7 around `domain.label_lookat`, looking at it (human: (0, 0, 0.2); cat: the origin, as AFHQ)."""
        return camera_label(yaw, pitch, lookat=self.domain.label_lookat, device=self.dist.device)

    def conditioning_cameras(self, n: int) -> torch.Tensor:
        """[n, 25] the camera the mapping network is conditioned on: this domain's frontal label camera
        (for cats it is EG3D's conditioning camera exactly: at (0, 0, 2.7), looking down -z)."""
        return self.label_cameras(0.0, 0.0).expand(n, 25)

    def after_backward(self, aux, step: int, micro: int) -> dict[str, torch.Tensor]:
        return {}

    def after_step(self) -> None:
        pass

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass


class EncoderStage(Stage):
    """Trains the encoder. Batches get `data.synthetic_per_batch` samples of the frozen generator (their
    canonical codes known: the latent loss); the discriminator sees generator codes vs. encoder rows."""

    name = "encoder"

    def __init__(self, cfg: dict, G, encoder, afa, dist_, autocast):
        from train.discriminator import LatentCodesDiscriminator
        from train.optim import make_optimizer

        super().__init__(cfg, G, encoder, afa, dist_, autocast)
        self.encoder, dev = encoder, dist_.device
        torch.manual_seed(cfg["seed"] + 3)
        disc = LatentCodesDiscriminator(G.w_dim, self.s["d_layers"]).to(dev)
        object.__setattr__(self, "disc", disc)  # not a child: DDP must not see it (R1 is a double backward)
        self.d_opt = make_optimizer("adam", disc.parameters(), self.s["d_lr"])
        # The progressive encoder leaves row groups unused until their stage starts.
        self.find_unused_parameters = self.s["progressive_start"] > 0 or self.s["progressive_every"] > 0
        self.n_syn = cfg["data"]["synthetic_per_batch"]
        if self.s["lambda_depth"] > 0:
            with torch.no_grad():  # mean face: reference depth of the background regulariser
                self.ws_avg = G.mean_ws()
                self.planes_avg = G.synthesize_planes(self.ws_avg)

    @property
    def trained(self) -> nn.Module:
        return self.encoder

    def run(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """-> ws, delta, rgb, image_depth of the W reconstruction."""
        m, s = self.method, self.s
        ws, delta = m.encode(batch["x_enc"], progressive_stage(step, s["progressive_start"], s["progressive_every"]))
        _, _, planes = m.synthesize(ws)
        out = m.render(planes, ws, batch["c"], superresolution=self.sr)
        return {"ws": ws, "delta": delta, "rgb": self.rgb(out), "image_depth": out.image_depth}

    def synthetic(self, step: int, micro: int) -> dict[str, torch.Tensor]:
        """This rank's frozen-G samples: canonical code ws = mapping(z, canonical camera), rendered at a random camera
        of the domain's label convention."""
        d, G, dev, t = self.cfg["data"], self.G, self.dist.device, self.cfg["train"]
        part = D.rank_slice(self.n_syn, self.dist.rank, self.dist.world, micro, t["accum_steps"])
        z, yaw, pitch = D.synthetic_codes(self.cfg["seed"], step, range(part.start, part.stop), G.z_dim,
                                          d["synthetic_yaw"], d["synthetic_pitch"])
        z, c = z.to(dev), self.label_cameras(yaw, pitch)
        with torch.no_grad():
            ws = G.mapping(z, self.conditioning_cameras(len(z)), truncation_psi=d["synthetic_truncation"])
            img = G.render_planes(G.synthesize_planes(ws), ws, c, deterministic=True)["image"].clamp(-1, 1)
        r = self.encoder.config.img_size
        x_enc = F.interpolate(img, size=(r, r), mode="bicubic", align_corners=False, antialias=True)
        return {"x": img, "x_enc": x_enc, "c": c, "ws": ws}

    def forward(self, batch: dict, step: int, micro: int):
        s, n_real = self.s, batch["x"].shape[0]
        syn = self.synthetic(step, micro) if self.n_syn else None
        if syn is not None:
            batch = {k: torch.cat([batch[k], syn[k]]) for k in ("x", "x_enc", "c")}
        out = self.run(batch, step)
        total, logs = self.recon(out["rgb"], batch["x"], n_real)
        ws = out["ws"]
        terms = {"delta": (s["lambda_delta"], out["delta"].norm(dim=-1).sum(1).mean())}
        if syn is not None:
            terms["latent"] = (s["lambda_latent"], (ws[n_real:] - syn["ws"]).pow(2).mean())
        if s["lambda_depth"] > 0:
            with torch.no_grad():
                n = ws.shape[0]
                ref = self.method.render(self.planes_avg.expand(n, -1, -1, -1), self.ws_avg.expand(n, -1, -1), batch["c"],
                                         superresolution=False, features=False).image_depth
            terms["depth"] = (s["lambda_depth"], background_depth_loss(out["image_depth"], ref, s["depth_margin"]).mean())
        if s["lambda_adv"] > 0:
            from train.discriminator import generator_adv_loss

            self.disc.requires_grad_(False)  # gradients through D into the codes, not into D
            terms["adv"] = (s["lambda_adv"], generator_adv_loss(self.disc(ws.reshape(-1, ws.shape[-1]))))
            self.disc.requires_grad_(True)
        for k, (weight, value) in terms.items():
            total = total + weight * value
            logs[k] = value.detach()
        logs["loss"] = total.detach()
        return total, logs, ws.detach()

    def after_backward(self, fake_ws: torch.Tensor, step: int, micro: int) -> dict[str, torch.Tensor]:
        """Canonical latent discriminator: real = mapping(z, canonical camera) of the frozen G; fake = every
        W+ row the encoder produced. Non-saturating logistic loss, lazy R1 on the reals (e4e)."""
        from train.discriminator import discriminator_loss, r1_penalty

        s, G, dev, cfg = self.s, self.G, self.dist.device, self.cfg
        if s["lambda_adv"] <= 0:
            return {}
        accum = cfg["train"]["accum_steps"]
        part = D.rank_slice(cfg["train"]["batch_size"] + self.n_syn, self.dist.rank, self.dist.world, micro, accum)
        z, _, _ = D.synthetic_codes(cfg["seed"] + 7, step, range(part.start, part.stop), G.z_dim, 0.0, 0.0)
        with torch.no_grad():
            real_w = G.mapping(z.to(dev), self.conditioning_cameras(len(z)))[:, 0]
        assert real_w.shape[0] == fake_ws.shape[0], (real_w.shape, fake_ws.shape)
        do_r1 = s["d_reg_every"] > 0 and step % s["d_reg_every"] == 0
        real_w.requires_grad_(do_r1)
        real_logits = self.disc(real_w)
        loss = discriminator_loss(real_logits, self.disc(fake_ws.reshape(-1, fake_ws.shape[-1])))
        logs = {"d_loss": loss.detach()}
        if do_r1:
            r1 = r1_penalty(real_logits, real_w)
            loss = loss + s["d_r1_gamma"] / 2 * r1 * s["d_reg_every"]
            logs["r1"] = r1.detach()
        (loss / accum).backward()
        return logs

    def after_step(self) -> None:
        if self.s["lambda_adv"] <= 0:
            return
        if self.dist.world > 1:  # R1's double backward is outside DDP's one-backward contract: average by hand
            for p in self.disc.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.dist.world
        self.d_opt.step()
        self.d_opt.zero_grad(set_to_none=True)

    def extra_state(self) -> dict:
        return {"discriminator": self.disc.state_dict(), "d_optimizer": self.d_opt.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.disc.load_state_dict(state["discriminator"])
        self.d_opt.load_state_dict(state["d_optimizer"])


class AFAStage(Stage):
    """Trains AFA on a trained, frozen encoder; the mix's blur sigma is drawn per step (official: U(1, 2))."""

    name = "afa"
    frozen_encoder = True

    def __init__(self, cfg: dict, G, encoder, afa, dist_, autocast):
        if not cfg["model"]["init"]:
            raise ConfigError("stage afa trains AFA on a trained encoder: set --init (model.init) to the encoder "
                              "stage's final/ folder, or use --stage all")
        super().__init__(cfg, G, encoder, afa, dist_, autocast)
        encoder.eval().requires_grad_(False)
        self.afa = afa

    @property
    def trained(self) -> nn.Module:
        return self.afa

    def blur_sigma(self, step: int) -> float:
        lo, hi = self.s["mask_blur_sigma"]
        return lo + (hi - lo) * float(torch.rand(1, generator=D.step_generator(self.cfg["seed"], step, 0xB1)))

    def run(self, batch: dict, step: int) -> dict[str, torch.Tensor]:
        """-> ws, rgb (final), rgb_w (W render), mask, image_depth (final)."""
        # The loss sees the mixed tri-planes' render at the input camera (reconstruction="mix"): what the
        # cache will show, with the W features kept where the input camera saw no surface.
        fwd = self.method(batch["x"], batch["x_enc"], batch["c"], superresolution=self.sr, reconstruction="mix",
                          afa_image_resolution=self.cfg["train"]["afa_image_resolution"], blur_sigma=self.blur_sigma(step))
        return {"ws": fwd.ws, "rgb": self.rgb(fwd.final), "rgb_w": self.rgb(fwd.render_w), "mask": fwd.mask["mask"],
                "image_depth": fwd.final.image_depth}

    def forward(self, batch: dict, step: int, micro: int):
        total, logs = self.recon(self.run(batch, step)["rgb"], batch["x"], batch["x"].shape[0])
        logs["loss"] = total.detach()
        return total, logs, None


STAGES = {"encoder": EncoderStage, "afa": AFAStage}  # `--stage all` runs them in this order, each from the last's result


class HeldOutEval:
    """Evaluation on a held-out list during training (config section `eval`): the first `eval.max_images` aligned
    crops of the labels file `eval.labels` (in `eval.path`, default data.path), inverted by the current pipeline and
    measured with goae.eval's metrics (MSE, SSIM, and LPIPS / identity where their networks are given, or random
    ones with `eval.networks: random`). `run` returns the means as `eval_<metric>` log entries; `keep_best` keeps
    checkpoints/best.pt by `eval.best`. Runs on rank 0, in eval mode, without touching the training RNG."""

    # The schema's defaults (train/configs/goae_ffhq.yaml `eval`), for configs saved before the section existed.
    DEFAULTS = {"labels": None, "path": None, "every": 0, "max_images": 16, "resolution": 256, "best": "lpips",
                "networks": "pretrained", "lpips_net": "alex", "lpips_trunk": None, "lpips_lin": None, "id_weights": None}

    @classmethod
    def wanted(cls, cfg: dict) -> bool:
        return bool((cfg.get("eval") or {}).get("labels"))

    def __init__(self, cfg: dict, device):
        e = self.e = {**self.DEFAULTS, **(cfg.get("eval") or {})}
        self.device = device
        self.dataset = D.EG3DDataset(e["path"] or cfg["data"]["path"], e["labels"], xflip=False)  # fail fast
        self.indices = list(range(min(self.dataset.num_images, e["max_images"])))
        if e["networks"] not in ("pretrained", "random"):
            raise ConfigError(f"eval.networks must be pretrained or random, got {e['networks']!r}")
        if e["best"] not in ("none", "mse", "lpips", "ssim", "id"):
            raise ConfigError(f"eval.best must be one of none, mse, lpips, ssim, id; got {e['best']!r}")
        with torch.random.fork_rng(devices=[]):
            self.nets = load_networks(e["lpips_trunk"], e["lpips_lin"], e["lpips_net"], e["id_weights"],
                                      random=e["networks"] == "random", seed=cfg["seed"],
                                      warn=lambda m: print(f"warning: eval: {m}", flush=True)).to(device)
        self.last: dict | None = None

    def due(self, step: int, last: bool) -> bool:
        return last or (self.e["every"] > 0 and step % self.e["every"] == 0)

    @torch.no_grad()
    def run(self, pipe, modules, step: int) -> dict[str, float]:
        was = [m.training for m in modules]
        for m in modules:
            m.eval()
        try:
            with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
                self.dataset.resolution = pipe.generator.img_resolution  # what the pipeline inverts
                batch = D.load_batch(self.dataset, self.indices, pipe.encoder_resolution, self.device)
                values = measure_batch(pipe, self.nets, batch["x"], batch["c"], self.e["resolution"])
        finally:
            for m, w in zip(modules, was):
                m.train(w)
        return self.record(step, values)

    def record(self, step: int, values: dict[str, list[float]]) -> dict[str, float]:
        """The means of one evaluation's per-image values, kept as `last` and returned as log entries. NaN/inf
        images are left out of a mean (goae.eval's finite_mean), and a metric with no finite value has no mean:
        one diverged image must not make a NaN the best value, which no later evaluation could beat."""
        means = {k: m for k, v in values.items() if (m := finite_mean(v)) is not None}
        self.last = {"step": step, "images": len(self.indices), "labels": str(self.e["labels"]),
                     "resolution": self.e["resolution"], "metrics": means, "networks": dict(self.nets.described)}
        return {f"eval_{k}": v for k, v in means.items()}

    def keep_best(self, run_dir, state_fn) -> bool:
        """After `run`: write checkpoints/best.pt when `eval.best` improved on best.json's value."""
        from train.checkpoint import read_best, save_best

        metric = self.e["best"]
        if metric == "none" or self.last is None or metric not in self.last["metrics"]:
            return False
        value, old = self.last["metrics"][metric], read_best(run_dir)
        if old is not None and old.get("metric") == metric:
            better = value > old["value"] if higher_is_better(metric) else value < old["value"]
            if not better:
                return False
        save_best(run_dir, state_fn(), {"metric": metric, "value": value, **self.last})
        return True
