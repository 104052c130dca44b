"""Speed of goae at the released FFHQ-512 sizes, stage by stage, plain fp32 path vs fast path.

    python benchmarks/run.py [--quick] [--device cpu|cuda] [--threads N] [--batch 1 8] [--repeats N]
                             [--modes fp32 fast] [--preset full|small] [--reference OFFICIAL.json] [--out PATH]

--reference: the official GOAE code timed on the same machine by ../shared/tools/official_speed
(its --json output); the table then shows an official column, speed-ups against it and the goals'
verdicts. Without it there is no official column and no verdicts (other machines' times do not compare).

Random weights (`GOAEPipeline.from_random(0)`): speed does not depend on the weights. Every
(batch, mode) pair runs in a fresh subprocess, so peak memory is that mode's own. Each stage gets a
warm-up call, then the median of N timed calls (CUDA: synchronised). The per-stage calls are the public
steps of the GOAE forward (`pipe.method`: goae.models.goae) that `GOAEPipeline.__call__` runs; `end_to_end` is the real `pipe(image, camera)`. Alignment (mediapipe, CPU)
runs once in the parent process. Prints a table and writes benchmarks/results/<machine>.json
atomically. benchmarks/README.md explains every row and the JSON.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing
EXAMPLES = Path(os.environ.get("GOAE_EXAMPLES_DIR", ROOT.parent / "shared" / "examples"))
DEFAULT_PHOTO = EXAMPLES / "wild" / "obama.jpg"

# (key, label): per call / batch = seconds per photo (the view rows: per frame, B frames per call).
STAGES = [
    ("encode", "encode (Swin-V2 -> W+)"),
    ("first_render", "first render (sum of the 3 below)"),
    ("generator", "  generator (tri-plane backbone)"),
    ("volume_rendering", "  volume rendering"),
    ("superresolution", "  super-resolution"),
    ("afa_mix", "AFA + occlusion-aware mix (sum of the 2 below)"),
    ("afa", "  AFA (refine)"),
    ("fuse", "  fuse: F tri-planes, mask, mix"),
    ("final_render", "final render"),
    ("end_to_end", "end-to-end pipe(image, camera)"),
    ("novel_view", "novel-view frame (cached tri-planes)"),
    ("preview_view", "preview frame (neural res {preview} + SR)"),
    ("preview_fast", "PREVIEW frame (neural res {preview}, no SR)"),
]
PIPELINE_STAGES = ("encode", "first_render", "afa_mix", "final_render")  # what end_to_end is made of

# Rows of the official timing JSON (../shared/tools/official_speed) -> this benchmark's stage keys, so that
# each pair does the same work. Both render the F tri-planes at the input camera as the reconstruction and
# take the mask from its depth. The official code times the F backbone (64..256) inside its final render
# (4a), goae inside `fuse`: the official 4a counts with AFA + mix here, and its final render is 4b + 4c.
OFFICIAL_ROWS = {"encode": ["1_encoder"], "first_render": ["2_first_render"],
                 "generator": ["2a_backbone_4to32", "2b_backbone_64to256"], "volume_rendering": ["2c_volume_render_128"],
                 "superresolution": ["2d_superres_to_512"], "afa_mix": ["3_afa_plus_mix", "4a_backbone_64to256"],
                 "afa": ["3a_afa"], "fuse": ["3b_occlusion_mix", "4a_backbone_64to256"],
                 "final_render": ["4b_volume_render_128", "4c_superres_to_512"], "end_to_end": ["5_end_to_end"],
                 "novel_view": ["6_novel_view_frame"]}
CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "avx512_vnni", "amx_tile", "amx_bf16", "amx_fp16")


# ------------------------------------------------------------------------------------------- helpers
def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far. Linux: VmHWM (ru_maxrss carries the parent's peak
    over fork+exec, so a worker would report the parent's size); elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if platform.system() == "Darwin" else r * 1024)


def rss_bytes() -> int | None:
    """Resident set size now (Linux VmRSS), or None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return None


def reset_peak_rss() -> bool:
    """Linux: VmHWM back to the current RSS (write 5 to /proc/self/clear_refs), so that the peaks read
    afterwards are those of the inference alone, on top of the built pipeline, as official_speed measures
    (its peak_rss_inference_mib). False where the kernel does not allow it (then the peaks include the build)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> dict[str, bool]:
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(re.search(r"^flags\s*:(.*)$", text, re.M).group(1).split())
    except (OSError, AttributeError):
        return {}
    return {f: f in flags for f in CPU_FLAGS}


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def machine_name(device: str, threads: int) -> str:
    import torch

    if device.startswith("cuda"):
        return slug(torch.cuda.get_device_name(torch.device(device)))
    return f"{slug(cpu_model())}-{threads}t"


def git_commit() -> dict[str, object]:
    def git(*a):
        return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    try:
        return {"commit": git("rev-parse", "HEAD") or None,
                "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def timed(fn, repeats: int, warmup: int, sync) -> tuple[list[float], object]:
    """Warm-up call(s), then `repeats` timed calls; returns (seconds per call, last output)."""
    out = None
    for _ in range(warmup):
        out = fn()
        sync()
    samples = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        samples.append(time.perf_counter() - t)
    return samples, out


def stage_entry(samples: list[float], items: int) -> dict[str, object]:
    med = statistics.median(samples)
    return {"median_s": med, "per_item_s": med / items, "items": items, "samples_s": samples}


# ------------------------------------------------------------------------------------------- worker
def build_pipeline(preset: str):
    from goae.pipeline import GOAEPipeline
    return GOAEPipeline.from_preset("small" if preset == "small" else "ffhq", 0)


def describe_fast_path(pipe) -> object:
    fp = getattr(pipe, "fast_path", None)
    if fp is None:
        return None
    if dataclasses.is_dataclass(fp):
        values = {f.name: getattr(fp, f.name) for f in dataclasses.fields(fp)}
        return {k: (v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)) for k, v in values.items()}
    return repr(fp)


def worker(spec: dict) -> dict:
    """Measure every stage for one (mode, batch) in this process."""
    import numpy as np
    import torch
    from PIL import Image

    from goae.export import extract_mesh, orbit_cameras

    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)
    B, R, W = spec["batch"], spec["repeats"], spec["warmup"]
    tag = f"[{spec['mode']} b{B}]"
    log = lambda msg: print(f"  {tag} {msg}", file=sys.stderr, flush=True)  # noqa: E731

    result: dict = {"mode": spec["mode"], "batch": B, "fast_path": None, "notes": []}
    if device.type == "cpu" and spec.get("allocator", "tuned") == "tuned":
        from goae.runtime import tune_cpu_allocator  # what the app and CLI do at start
        result["allocator_tuned"] = tune_cpu_allocator()
    from goae.runtime import cpu_allocator
    result["cpu_allocator"] = cpu_allocator()  # jemalloc: preloaded by the parent (--allocator jemalloc)
    t0 = time.perf_counter()
    pipe = build_pipeline(spec["preset"]).to(device)
    pipe.set_progress_bar_config(disable=True)
    if spec["mode"] == "fp32" and cuda:  # the parity path is true fp32: no TF32 convolutions or matmuls
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    if spec["mode"] == "fast":
        # as the app and CLI run it: the weights only used in bf16 stored in bf16
        pipe.enable_fast_path(precision=spec["precision"], compile=spec["compile"], keep_fp32_weights=False)
        result["fast_path"] = describe_fast_path(pipe)
    result["build_s"] = time.perf_counter() - t0
    result["peak_rss_build_bytes"] = peak_rss_bytes()
    # This process ran nothing else; with the build's own peak set aside, the peaks below are the inference's.
    result["rss_after_build_bytes"] = rss_bytes()
    result["peak_reset_after_build"] = reset_peak_rss()
    if not result["peak_reset_after_build"]:
        result["notes"].append("peak RSS could not be reset after the build: the peaks include building the pipeline")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    image = Image.open(spec["image"]).convert("RGB")
    camera = np.asarray(json.loads(Path(spec["camera"]).read_text()), dtype=np.float32)
    images, cameras = [image] * B, np.repeat(camera[None], B, axis=0)
    gen = pipe.generator
    stages: dict[str, dict] = {}

    def run(key, fn, items):
        samples, out = timed(fn, R, W, sync)
        stages[key] = stage_entry(samples, items)
        log(f"{key:18s} {stages[key]['per_item_s']:8.3f} s/{'frame' if key.endswith('view') else 'photo'}")
        return out

    # -- the real thing first, and views from its cached tri-planes (both honour the fast path themselves):
    # its peak RSS is the pipeline's own, before the stage split below keeps intermediates alive.
    with torch.no_grad():
        out = run("end_to_end", lambda: pipe(images, cameras, output_type=None), B)
        one = {"planes": out.planes[:1], "ws": out.ws[:1]}  # the first photo's cache
        views = orbit_cameras(B + 1, device=device)[1:]  # B turntable frames of it per call
        run("novel_view", lambda: pipe.render_view(out, views, **one, output_type=None), B)
        preview = spec["preview_res"]
        run("preview_view", lambda: pipe.render_view(out, views, **one, neural_rendering_resolution=preview,
                                                     output_type=None), B)
        run("preview_fast", lambda: pipe.preview_view(out, views, **one, resolution=preview, output_type=None), B)
    result["peak_rss_bytes"] = peak_rss_bytes()  # pipe() + views, as the app and CLI run them
    if cuda:
        result["cuda_peak_bytes"] = torch.cuda.max_memory_allocated(device)

    with torch.no_grad():
        # -- the steps of the GOAE forward that pipe(...) runs, one at a time (same calls, same order)
        method = pipe.method
        x_enc, x_512 = pipe.preprocess(images)
        c = pipe.camera_tensor(cameras, B)
        ws = run("encode", lambda: method.encode(x_enc)[0], B)
        x_rec, img_rec, planes_w = run("generator", lambda: method.synthesize(ws), B)
        render_w = run("volume_rendering", lambda: method.render(planes_w, ws, c, superresolution=False), B)

        def superresolution():  # one image at a time on a CPU, as GOAE.render does
            chunks = [slice(i, i + 1) for i in range(B)] if not cuda else [slice(0, B)]
            with method.autocast():
                return torch.cat([gen.super_resolve(render_w.image_raw[s], render_w.feature_image[s], ws[s]).float()
                                  for s in chunks])
        image_w = run("superresolution", superresolution, B)
        parts = [stages[k]["samples_s"] for k in ("generator", "volume_rendering", "superresolution")]
        stages["first_render"] = stage_entry([sum(s) for s in zip(*parts)], B)

        adain = run("afa", lambda: method.refine(x_512, image_w, x_rec)["feature_map_adain"], B)
        # As GOAE.forward: the F tri-planes, their render at the input camera (the reconstruction), the mix
        # from its depth. `fuse` = the F backbone + the mix, timed apart around the render.
        planes_f = run("fuse_planes", lambda: method.synthesize_from(ws, adain, img_rec), B)
        final = run("final_render", lambda: method.render(planes_f, ws, c), B)
        run("fuse_mix", lambda: method.mix(planes_w, planes_f, final), B)
        stages["fuse"] = stage_entry([a + b for a, b in zip(stages.pop("fuse_planes")["samples_s"],
                                                            stages.pop("fuse_mix")["samples_s"])], B)
        stages["afa_mix"] = stage_entry([a + b for a, b in zip(stages["afa"]["samples_s"], stages["fuse"]["samples_s"])], B)

    result["peak_rss_stages_bytes"] = peak_rss_bytes()  # + the stage split (holds every intermediate)
    if not cuda and B == 1:
        result["compute"] = compute_floor(pipe, images, cameras, out, views, one, spec["mode"])
        log(f"work {result['compute']['photo_gflop']:.0f} GFLOP/photo, {result['compute']['view_gflop']:.0f} "
            f"GFLOP/view; best measured rate {result['compute']['best_gflops']:.0f} GFLOP/s")
    stages_sum = sum(stages[k]["median_s"] for k in PIPELINE_STAGES)
    result["stages_sum_s"] = stages_sum

    # -- meshes (one tri-plane set; batch-independent, so only the batch-1 run measures them)
    for r in spec["mesh"]:
        key = f"mesh_{r}"
        samples, mesh = timed(lambda: extract_mesh(gen, one["planes"], resolution=r, level="auto"), R, W, sync)
        stages[key] = stage_entry(samples, 1)
        stages[key]["vertices"] = int(len(mesh[0]))
        log(f"{key:18s} {stages[key]['median_s']:8.3f} s")
    result["peak_rss_total_bytes"] = peak_rss_bytes()
    if cuda:
        result["cuda_peak_total_bytes"] = torch.cuda.max_memory_allocated(device)
    result["stages"] = stages
    result["wall_s"] = time.perf_counter() - t0
    return result


def compute_floor(pipe, images, cameras, out, views, one, mode: str) -> dict:
    """The arithmetic of one photo and one view (convolutions and matrix products, counted by
    torch.utils.flop_counter; the fused render kernel's MLP is not counted) and this CPU's best measured
    rates for those ops in the mode's dtype: work / best rate is a floor for the method on this machine at
    the rates PyTorch reaches here (every op at the best rate, nothing else costing time)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    def count(fn) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            fn()
        return counter.get_total_flops() / 1e9

    photo = count(lambda: pipe(images, cameras, output_type=None))
    view = count(lambda: pipe.render_view(out, views, **one, output_type=None))
    dtype = torch.bfloat16 if mode == "fast" and getattr(pipe, "fast_path", None) is not None \
        and pipe.fast_path.precision == "bf16" else torch.float32

    def best_rate(fn, flop: float) -> float:
        return flop / min(timed(fn, 5, 1, lambda: None)[0]) / 1e9

    a, b = torch.randn(2048, 2048, dtype=dtype), torch.randn(2048, 2048, dtype=dtype)
    x = torch.randn(1, 256, 128, 128, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(256, 256, 3, 3, dtype=dtype)
    with torch.no_grad():
        rates = {"matmul_2048": best_rate(lambda: a @ b, 2 * 2048 ** 3),
                 "conv3x3_256ch_128px": best_rate(lambda: F.conv2d(x, w, padding=1), 2 * 256 * 256 * 9 * 128 * 128)}
    best = max(rates.values())
    return {"dtype": str(dtype).replace("torch.", ""), "photo_gflop": photo, "view_gflop": view, "rates_gflops": rates,
            "best_gflops": best, "photo_floor_s": photo / best, "view_floor_s": view / best}


# ------------------------------------------------------------------------------------------- align
def bench_align(photo: Path | None, repeats: int, warmup: int, tmp: Path) -> tuple[dict, Path, Path]:
    """Time goae.align.align_face on a real photo; write the aligned crop + camera for the workers.
    Without a photo (examples absent) the workers get a seeded noise image at the frontal camera."""
    import numpy as np
    from PIL import Image

    image_path, camera_path = tmp / "aligned.png", tmp / "camera.json"
    if photo is None:
        from goae.camera import camera_label
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8)).save(image_path)
        camera_path.write_text(json.dumps(camera_label(0.0, 0.0)[0].tolist()))
        return ({"skipped": f"no example photo at {DEFAULT_PHOTO} (set GOAE_EXAMPLES_DIR or --photo); "
                            "the pipeline rows use a noise image at the frontal camera"}, image_path, camera_path)
    from goae.align import align_face
    samples, aligned = timed(lambda: align_face(photo), repeats, max(warmup, 1), lambda: None)
    aligned.image.save(image_path)
    camera_path.write_text(json.dumps(np.asarray(aligned.camera, dtype=np.float64).tolist()))
    return ({"photo": str(photo), "source_size": list(aligned.source_size), **stage_entry(samples, 1)},
            image_path, camera_path)


# ------------------------------------------------------------------------------------------- reference
class ReferenceError_(ValueError):
    """The --reference file is not an official_speed JSON."""


def load_reference(path: Path) -> dict:
    """official_speed.py's JSON -> {source, machine, device, threads, stages_s, peak_rss_gb}."""
    try:
        raw = json.loads(Path(path).read_text())
        timings = raw["timings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ReferenceError_(f"--reference {path}: not an official_speed.py JSON ({type(e).__name__}: {e})") from None
    stages = {}
    for key, rows in OFFICIAL_ROWS.items():
        if all(r in timings for r in rows):
            stages[key] = sum(float(timings[r]["median_s"]) for r in rows)
    if "end_to_end" not in stages:
        raise ReferenceError_(f"--reference {path}: no end-to-end row (5_end_to_end) in its timings")
    mem = raw.get("memory") or {}
    peak_mib = mem.get("peak_rss_inference_mib") or mem.get("peak_rss_process_mib")
    machine = raw.get("machine") or {}
    return {"source": str(path), "what": raw.get("what"), "device": str(raw.get("device", "cpu")).split(":")[0],
            "threads": raw.get("threads"), "cpu_model": machine.get("cpu_model"), "gpu": machine.get("gpu"),
            "stages_s": stages, "peak_rss_gb": peak_mib * 2 ** 20 / 1e9 if peak_mib else None}


def reference_for(report: dict, batch: int) -> dict | None:
    """The reference where it compares: same device kind, batch 1 (the official path runs batch 1)."""
    ref = report.get("reference")
    if not ref or batch != 1 or ref["device"] != report["env"]["device"].split(":")[0]:
        return None
    return ref


# ------------------------------------------------------------------------------------------- report
def fmt(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def per_item(run: dict | None, key: str):
    if not run or "stages" not in run or key not in run["stages"]:
        return None
    return run["stages"][key]["per_item_s"]


def table(report: dict, batch: int) -> str:
    runs = {r["mode"]: r for r in report["runs"] if r["batch"] == batch}
    fp32, fast = runs.get("fp32"), runs.get("fast")
    reference = reference_for(report, batch)
    ref = reference["stages_s"] if reference else {}
    cfg = report["config"]
    head = (f"batch {batch}: seconds per photo (view rows: per frame; mesh: per mesh), median of {cfg['repeats']} "
            f"after {cfg['warmup']} warm-up; {report['env']['device_name']}, {report['env']['threads']} threads, "
            f"preset {cfg['preset']}"
            + (f", allocator {cfg.get('allocator', 'default')}" if report["env"]["device"] == "cpu" else ""))
    if reference:
        head += (f"\nofficial column: {reference['source']} ({reference.get('cpu_model') or reference.get('gpu')}, "
                 f"{reference['threads']} threads); speed-up = official / goae")
    cols = f"{'stage':42s} {'fp32 s':>9s} {'fast s':>9s} {'ratio':>7s}"
    rows = [head, cols + (f" {'official s':>10s} {'x fp32':>7s} {'x fast':>7s}" if reference else "")]
    rows.append("-" * len(rows[-1]))

    def row(label, a, b, refv=None, digits=3):
        ratio = f"{a / b:6.2f}x" if a and b else "-"
        line = f"{label:42s} {fmt(a, digits):>9s} {fmt(b, digits):>9s} {ratio:>7s}"
        if reference:
            up = lambda v: f"{refv / v:6.2f}x" if refv and v else "-"  # noqa: E731
            line += f" {fmt(refv, 2):>10s} {up(a):>7s} {up(b):>7s}"
        rows.append(line)

    al = report.get("align", {})
    if batch != cfg["batches"][0]:
        pass  # alignment and meshes are measured once, shown in the first batch's table
    elif "median_s" in al:
        rows.append(f"{'align (mediapipe, ' + Path(al['photo']).name + ')':42s} {fmt(al['median_s']):>9s} "
                    f"{'(same)':>9s} {'-':>7s}")
    else:
        rows.append(f"{'align':42s} skipped: {al.get('skipped', 'not run')}")
    for key, label in STAGES:
        row(label.format(preview=cfg["preview_res"]), per_item(fp32, key), per_item(fast, key), ref.get(key))
    for r in cfg["mesh"] if batch == cfg["batches"][0] else []:
        row(f"mesh {r}^3 (extract_mesh)", per_item(fp32, f"mesh_{r}"), per_item(fast, f"mesh_{r}"))
    gb = lambda run, k: run[k] / 1e9 if run and k in run else None  # noqa: E731
    row("peak RSS, pipe() + views (GB)", gb(fp32, "peak_rss_bytes"), gb(fast, "peak_rss_bytes"),
        reference["peak_rss_gb"] if reference else None, digits=2)
    row("peak RSS, + stage split (GB)", gb(fp32, "peak_rss_stages_bytes"), gb(fast, "peak_rss_stages_bytes"), digits=2)
    row("peak RSS, + meshes (GB)", gb(fp32, "peak_rss_total_bytes"), gb(fast, "peak_rss_total_bytes"), digits=2)
    if report["env"]["device"].startswith("cuda"):
        row("CUDA max_memory_allocated (GB)", gb(fp32, "cuda_peak_bytes"), gb(fast, "cuda_peak_bytes"), digits=2)
    floor = lambda run, k: run["compute"][k] if run and "compute" in run else None  # noqa: E731
    if fp32 and "compute" in fp32 or fast and "compute" in fast:
        row("work of one photo (GFLOP, conv + matmul)", floor(fp32, "photo_gflop"), floor(fast, "photo_gflop"), digits=0)
        row("best measured rate here (GFLOP/s)", floor(fp32, "best_gflops"), floor(fast, "best_gflops"), digits=0)
        row("compute floor of a photo (s)", floor(fp32, "photo_floor_s"), floor(fast, "photo_floor_s"),
            ref.get("end_to_end"))
        row("compute floor of a view (s)", floor(fp32, "view_floor_s"), floor(fast, "view_floor_s"), ref.get("novel_view"))
    rows.append("ratio = fp32 / fast (above 1: the fast path is faster / smaller). "
                "(PREVIEW = explicit lower-resolution mode, not the default.)")
    for mode, run in runs.items():
        if "skipped" in run or "error" in run:
            rows.append(f"{mode}: {run.get('skipped') or run.get('error')}")
        else:
            rows.append(f"{mode}: sum of stage medians {run['stages_sum_s'] / batch:.3f} s/photo vs end-to-end "
                        f"{per_item(run, 'end_to_end'):.3f}; fast path {run['fast_path']}")
            rows += [f"{mode}: note: {n}" for n in run.get("notes", [])]
    return "\n".join(rows)


# Speed-ups over the official code on the same machine (batch 1), and the absolute GPU goals (an H100).
# Issue #30's goals on a CPU: speed-ups over the official code, and peak RSS of pipe() plus views.
CPU_SPEEDUP_GOALS = {"fp32": {"end_to_end": 2.5, "novel_view": 2.5}, "fast": {"end_to_end": 10.0, "novel_view": 14.0}}
CPU_PEAK_RSS_GOAL_GB = 1.6
GPU_SPEEDUP_GOAL = 2.0


def goals(report: dict) -> list[dict]:
    """Verdicts against the reference measured on the same machine; none without one."""
    reference = reference_for(report, 1)
    if reference is None:
        return []
    runs = {r["mode"]: r for r in report["runs"] if r["batch"] == 1 and "stages" in r}
    ref = reference["stages_s"]
    out = []

    def goal(name, mode, value, limit, unit, cmp=">="):
        met = None if value is None else (value <= limit if cmp == "<=" else value >= limit)
        out.append({"goal": name, "mode": mode, "target": f"{cmp} {limit} {unit}", "value": value, "met": met})

    def speedup(r, key):
        v = per_item(r, key)
        return ref[key] / v if v and key in ref else None

    def ceiling(r, key, floor_key):  # the speed-up if every op ran at the best rate measured here
        floor = (r or {}).get("compute", {}).get(floor_key)
        return round(ref[key] / floor, 2) if floor and key in ref else None

    if report["env"]["device"] == "cpu":
        for mode, targets in CPU_SPEEDUP_GOALS.items():
            r = runs.get(mode)
            goal("CPU photo speed-up vs official", mode, speedup(r, "end_to_end"), targets["end_to_end"], "x")
            out[-1]["ceiling"] = ceiling(r, "end_to_end", "photo_floor_s")
            goal("CPU frame speed-up vs official", mode, speedup(r, "novel_view"), targets["novel_view"], "x")
            out[-1]["ceiling"] = ceiling(r, "novel_view", "view_floor_s")
            if reference["peak_rss_gb"]:
                goal("CPU peak RSS vs official", mode, r["peak_rss_bytes"] / 1e9 if r else None,
                     round(reference["peak_rss_gb"], 2), "GB", "<=")
            goal("CPU peak RSS, pipe() + views", mode, r["peak_rss_bytes"] / 1e9 if r else None,
                 CPU_PEAK_RSS_GOAL_GB, "GB", "<=")
    else:
        for mode, r in runs.items():
            goal("GPU photo speed-up vs official", mode, speedup(r, "end_to_end"), GPU_SPEEDUP_GOAL, "x")
            goal("GPU photo inverted + first view", mode, per_item(r, "end_to_end"), 0.050, "s", "<=")
            fps = [1 / per_item(x, "novel_view") for x in report["runs"]
                   if x["mode"] == mode and "stages" in x and per_item(x, "novel_view")]
            goal("GPU turntable fps (best batch)", mode, max(fps) if fps else None, 60, "fps")
            goal("GPU 256^3 mesh", mode, per_item(r, "mesh_256"), 1.0, "s", "<=")
    return out


def goals_text(report: dict) -> str:
    if not report["goals"]:
        return ("goals: no verdicts without --reference (the official code timed on this machine by "
                "../shared/tools/official_speed/official_speed.py --json)")
    env = report["env"]
    lines = ["goals (batch 1; speed-ups against the official code on this machine; GPU times for an H100):"]
    if env["device"] == "cpu" and env["threads"] != (report["reference"] or {}).get("threads"):
        lines.append(f"  note: this run used {env['threads']} threads, the reference {report['reference']['threads']}")
    for g in report["goals"]:
        state = {True: "MET", False: "not met", None: "not measured"}[g["met"]]
        ceiling = f"  (compute ceiling here: {g['ceiling']:.1f}x)" if g.get("ceiling") else ""
        lines.append(f"  {g['goal']:34s} {g['mode']:5s} {g['target']:>10s}  measured {fmt(g['value'])}  {state}{ceiling}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="batch 1, 2 repeats, mesh 128^3 only (a few minutes on a CPU)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count(), help="torch.set_num_threads (default: all cores)")
    ap.add_argument("--batch", type=int, nargs="+", help="batch sizes (default 1 8; --quick: 1)")
    ap.add_argument("--repeats", type=int, help="timed calls per stage, after the warm-up (default 5; --quick: 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls per stage first")
    ap.add_argument("--modes", nargs="+", default=["fp32", "fast"], choices=["fp32", "fast"])
    ap.add_argument("--precision", default="auto", help="fast path precision: auto|bf16|fp16|fp32")
    ap.add_argument("--compile", action="store_true", help="fast path with torch.compile")
    ap.add_argument("--allocator", default="tuned", choices=["tuned", "default", "jemalloc"],
                    help="CPU: goae.runtime.tune_cpu_allocator() in both modes as the app and CLI do (tuned), "
                         "jemalloc preloaded into the measuring processes (jemalloc; it must be installed), "
                         "or glibc's defaults")
    ap.add_argument("--preset", default="full", choices=["full", "small"], help="small: tiny model, for tests only")
    ap.add_argument("--mesh", type=int, nargs="*", help="mesh resolutions (default 128 256; --quick: 128)")
    ap.add_argument("--preview-res", type=int, default=64, help="neural rendering resolution of the preview row")
    ap.add_argument("--photo", type=Path, help=f"photo for the align row (default {DEFAULT_PHOTO})")
    ap.add_argument("--reference", type=Path, help="official_speed.py --json output measured on this machine "
                    "(official column, speed-ups and goals); without it: no official column, no verdicts")
    ap.add_argument("--out", type=Path, help="JSON path (default benchmarks/results/<machine>.json)")
    ap.add_argument("--worker", type=Path, help=argparse.SUPPRESS)  # internal: one (mode, batch) measurement
    args = ap.parse_args(argv)
    args.batch = args.batch or ([1] if args.quick else [1, 8])
    args.repeats = args.repeats or (2 if args.quick else 5)
    args.mesh = args.mesh if args.mesh is not None else ([128] if args.quick else [128, 256])
    if min(args.batch) < 1 or args.repeats < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--batch, --repeats and --threads must be >= 1, --warmup >= 0")
    return args


def spawn(spec: dict, tmp: Path) -> dict:
    name = f"{spec['mode']}_b{spec['batch']}"
    spec_path, result_path = tmp / f"{name}.spec.json", tmp / f"{name}.result.json"
    spec_path.write_text(json.dumps({**spec, "result": str(result_path)}))
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]), "MKL_NUM_THREADS": str(spec["threads"])}
    if spec.get("allocator") == "jemalloc":
        env["LD_PRELOAD"] = " ".join(filter(None, [spec["jemalloc"], env.get("LD_PRELOAD", "")]))
    proc = subprocess.run([sys.executable, __file__, "--worker", str(spec_path)], env=env,
                          stdout=subprocess.PIPE, stderr=None, text=True)
    if proc.returncode != 0 or not result_path.exists():
        return {"mode": spec["mode"], "batch": spec["batch"],
                "error": f"worker exited with code {proc.returncode} (its traceback is printed above)"}
    return json.loads(result_path.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        spec = json.loads(args.worker.read_text())
        Path(spec["result"]).write_text(json.dumps(worker(spec)))
        return 0

    import torch

    from goae.io import atomic_write_bytes

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    reference = None
    if args.reference is not None:
        try:
            reference = load_reference(args.reference)
        except ReferenceError_ as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    photo = args.photo
    if photo is not None and not photo.is_file():
        print(f"error: --photo {photo} not found", file=sys.stderr)
        return 2
    jemalloc = None
    if args.allocator == "jemalloc":
        from goae.runtime import jemalloc_library
        jemalloc = jemalloc_library()
        if jemalloc is None:
            print("error: --allocator jemalloc but no libjemalloc.so.2 is installed "
                  "(Debian/Ubuntu: apt-get install libjemalloc2)", file=sys.stderr)
            return 2
    if photo is None and DEFAULT_PHOTO.is_file():
        photo = DEFAULT_PHOTO
    cuda = args.device.startswith("cuda")
    env = {"torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
           "device": args.device, "threads": args.threads, "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
           "device_name": torch.cuda.get_device_name(torch.device(args.device)) if cuda else cpu_model(),
           **{f"git_{k}": v for k, v in git_commit().items()}}
    machine = machine_name(args.device, args.threads)
    out_path = args.out or ROOT / "benchmarks" / "results" / f"{machine}.json"
    config = {"preset": args.preset, "quick": args.quick, "repeats": args.repeats, "warmup": args.warmup,
              "batches": args.batch, "modes": args.modes, "mesh": args.mesh, "preview_res": args.preview_res,
              "precision": args.precision, "compile": args.compile, "allocator": args.allocator}
    report = {"schema": 1, "machine": machine, "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "command": [Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)],
              "env": env, "config": config, "reference": reference, "runs": []}
    print(f"goae benchmark on {machine}: preset {args.preset}, modes {args.modes}, batches {args.batch}",
          file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="goae-bench-") as tmp:
        tmp = Path(tmp)
        report["align"], image_path, camera_path = bench_align(photo, args.repeats, args.warmup, tmp)
        for batch in args.batch:
            for mode in args.modes:
                spec = {"mode": mode, "batch": batch, "preset": args.preset, "device": args.device,
                        "threads": args.threads, "repeats": args.repeats, "warmup": args.warmup,
                        "precision": args.precision, "compile": args.compile, "preview_res": args.preview_res,
                        "allocator": args.allocator, "jemalloc": jemalloc,
                        "mesh": args.mesh if batch == args.batch[0] else [],
                        "image": str(image_path), "camera": str(camera_path)}
                report["runs"].append(spawn(spec, tmp))
    report["goals"] = goals(report)
    print()
    for batch in args.batch:
        print(table(report, batch), end="\n\n")
    print(goals_text(report))
    atomic_write_bytes(out_path, (json.dumps(report, indent=1) + "\n").encode())
    print(f"\nwrote {out_path}")
    return 1 if any("error" in r for r in report["runs"]) else 0


if __name__ == "__main__":
    sys.exit(main())
