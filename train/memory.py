"""Peak memory of one training step: `python train/memory.py --stage encoder --images 2 --nrr 32`.

Builds the released architecture (random weights, `model.preset=ffhq` of the config), one stage with its
optimiser and random-weight loss networks, and runs one optimiser step on `--images` random photos per
micro-batch (real + synthetic together, as the loop's batch holds them). Prints one JSON line: the peak
over the step (CUDA: max_memory_allocated; CPU: the growth of this process's resident-set high-water mark,
reset before the step where Linux allows it, else the lifetime peak: run each size in its own process), the process's growth after it (after a gc and malloc_trim; it also holds the libraries'
caches and what the allocator keeps) and the exact bytes of what the step must keep: gradients and
optimiser state. Used to size
`train.accum_steps` per card (README "Training", train/configs/goae_ffhq.yaml).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from goae.runtime import release_cpu_memory  # noqa: E402
from train.config import load_config  # noqa: E402
from train.optim import make_optimizer  # noqa: E402
from train.run import Dist, build_models  # noqa: E402
from train.stages import STAGES  # noqa: E402

CONFIG = Path(__file__).resolve().parent / "configs" / "goae_ffhq.yaml"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _reset_cpu_peak() -> None:
    """Start the resident-set high-water mark afresh (Linux: writing 5 to clear_refs resets VmHWM), so the
    peak is this step's, not the process's earlier work; where that is refused the lifetime peak stays."""
    gc.collect()
    release_cpu_memory()  # the heap's free pages would otherwise count as 'before' and hide what the step keeps
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def _cpu_peak() -> int:
    with contextlib.suppress(OSError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(stage: str, images: int, nrr: int | None, device: str = "auto", preset: str = "ffhq",
            render: str = "sr") -> dict:
    """One optimiser step of `stage` on `images` samples per micro-batch -> sizes in bytes."""
    real = max(1, images // 2)
    overrides = ["model.preset=small", "losses.lpips=random", "losses.id=random", f"train.device={device}",
                 f"train.batch_size={real}", f"data.synthetic_per_batch={images - real}", f"train.render={render}"]
    if nrr is not None:
        overrides.append(f"train.neural_rendering_resolution={nrr}")
    cfg = load_config(CONFIG, overrides)
    cfg["model"]["preset"] = preset  # training allows the small presets only; the released one is measured here
    if stage == "afa":  # a trained encoder in the real run; only its frozen presence matters here
        cfg["data"]["synthetic_per_batch"], real = 0, images
    dist_ = Dist(device)
    dev = dist_.device
    G, encoder, afa = build_models(cfg, dev)
    cls = STAGES[stage]
    if stage == "afa":
        cfg["model"]["init"] = "measured"  # the stage only checks that an encoder was given
    st = cls(cfg, G, encoder, afa, dist_, contextlib.nullcontext)  # the config's precision: fp32
    opt = make_optimizer(cfg[f"{stage}_stage"]["optimizer"], st.trained.parameters(), cfg[f"{stage}_stage"]["lr"])
    g = torch.Generator().manual_seed(0)
    x = torch.rand(real, 3, G.img_resolution, G.img_resolution, generator=g) * 2 - 1
    r = encoder.config.img_size
    batch = {"x": x.to(dev), "x_enc": torch.nn.functional.interpolate(x, size=(r, r), mode="area").to(dev),
             "c": st.label_cameras(torch.zeros(real), torch.zeros(real))}
    st.trained.train(cfg["train"]["module_mode"] == "train")
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        _reset_cpu_peak()
        before = _rss()
    t0 = time.perf_counter()
    loss, _, aux = st(batch, step=10 ** 6, micro=0)  # past the progressive schedule: every W+ row trained
    loss.backward()
    st.after_backward(aux, 10 ** 6, 0)
    opt.step()
    st.after_step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak, after = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
    else:
        peak = _cpu_peak()
        gc.collect()
        release_cpu_memory()
        after = _rss()
    trained = sum(p.numel() for p in st.trained.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in st.trained.parameters() if p.grad is not None)
    states = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    return {"stage": stage, "images": images, "nrr": nrr or G.neural_rendering_resolution, "device": str(dev),
            "step_s": round(time.perf_counter() - t0, 1), "peak_over_start_GB": round((peak - before) / 1e9, 3),
            "persistent_growth_GB": round((after - before) / 1e9, 3), "state_GB": round((grads + states) / 1e9, 4),
            "trained_params_M": round(trained / 1e6, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--stage", choices=sorted(STAGES), default="encoder")
    p.add_argument("--images", type=int, default=2, help="samples per micro-batch (real + synthetic)")
    p.add_argument("--nrr", type=int, default=None, help="neural rendering resolution (default: the model's, 128)")
    p.add_argument("--device", default="auto")
    p.add_argument("--preset", default="ffhq")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.stage, a.images, a.nrr, a.device, a.preset)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
