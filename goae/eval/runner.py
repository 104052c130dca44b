"""`evaluate`: invert a set of photos and measure each reconstruction (goae.eval.metrics), resumable and sharded.

Inputs (`gather_inputs`):
- an EG3D labels file (`dataset.json`: {"labels": [[relpath, [25 floats]], ...]}) or a folder holding one: aligned
  512x512 crops with their cameras. An image of the folder that has no label, or a label whose image is missing,
  is skipped with its reason;
- any other photo, folder or glob (goae.cli.expand_inputs): in-the-wild photos that the pipeline's domain aligns.

Each image gets `records/<name>.json` (status, reason, metrics, seconds) and, once measured, `images/<name>/`
(input, reconstruction and views at 256 px for the report, Inception features when FID is on, and `result.json`
naming the input), written atomically. Names are those of `goae invert` (goae.cli.input_folders): after the path
relative to the folder it came from, stable when inputs are added or reordered, so `resume=True` finds an image's
record again; it keeps the records measured with the same settings. Under torchrun (RANK / WORLD_SIZE) each process
takes every WORLD_SIZE-th image; the processes meet once (gloo) and rank 0 merges the records from the folder.
An image that fails (no face, no label, unreadable, not a regular file) is one line and a skipped record; the run
goes on.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from goae.eval import metrics as M
from goae.eval import networks as N
from goae.io import NotARegularFile, atomic_dir, atomic_write_bytes, check_regular_file, one_line, sha256_file

LABEL_FILES = ("dataset.json",)


@dataclass
class EvalOptions:
    resolution: int = 256                 # input-view metrics at this size (pSp/e4e: 256)
    yaws: tuple[float, ...] = (-30.0, 30.0)  # novel views, degrees from frontal, around the generator's pivot
    pitch: float = 0.0
    best_by: str = "lpips"                # the report's best / worst images by this metric
    sheet_rows: int = 4                   # best and worst images in the contact sheet, each
    labels: str = "dataset.json"          # labels file name looked for in a folder of aligned crops


@dataclass
class MetricNetworks:
    """The loaded networks (None: that metric is not measured) and, per name, what was loaded or why not."""
    lpips: N.LPIPS | None = None
    identity: N.IdentityNet | None = None
    inception: N.InceptionFID | None = None
    described: dict[str, str] = field(default_factory=dict)

    def to(self, device) -> "MetricNetworks":
        for name in ("lpips", "identity", "inception"):
            if getattr(self, name) is not None:
                setattr(self, name, getattr(self, name).to(device))
        return self


def _describe(paths: Sequence) -> str:
    return ", ".join(f"{Path(p).name} (sha256 {sha256_file(p)[:12]})" for p in paths)


def load_networks(lpips_trunk=None, lpips_lin=None, lpips_net: str = "alex", id_weights=None, inception=None,
                  random: bool = False, seed: int = 0, warn: Callable[[str], None] | None = None) -> MetricNetworks:
    """Metric networks from the user's files (safe readers only). `random=True`: seeded random LPIPS and
    identity networks (and Inception when `inception == "random"`), for tests and trying the tool. A network
    whose file is missing or wrong is one line through `warn` and its metric is not measured."""
    warn = warn or (lambda m: print(f"goae eval: {m}", file=sys.stderr))
    nets = MetricNetworks()
    jobs = (("lpips", f"LPIPS ({lpips_net})", lambda: N.LPIPS(lpips_net),
             lambda: N.LPIPS.from_pretrained(lpips_trunk, lpips_lin, lpips_net, ("pass it with --lpips-trunk",
                                                                                 "pass it with --lpips-lin")),
             lpips_trunk is not None or lpips_lin is not None, (lpips_trunk, lpips_lin)),
            ("identity", "identity (IR-SE50)", N.IdentityNet,
             lambda: N.IdentityNet.from_pretrained(id_weights, "pass it with --id-weights"), id_weights is not None,
             (id_weights,)),
            ("inception", "FID (Inception)", N.InceptionFID,
             lambda: N.InceptionFID.from_pretrained(inception, "pass it with --inception"),
             inception not in (None, "random"), (inception,)))
    for i, (name, title, make_random, make, given, paths) in enumerate(jobs):
        if random and not given and (name != "inception" or inception == "random"):
            torch.manual_seed(seed + 101 * (i + 1))
            setattr(nets, name, make_random())
            nets.described[name] = f"random weights (seed {seed}): not a measurement"
            continue
        if not given:
            nets.described[name] = f"not measured: no {title} weights given"
            continue
        try:
            setattr(nets, name, make())
            nets.described[name] = _describe(paths)
        except (N.MissingWeightsError, N.WeightsFileError) as e:
            nets.described[name] = f"not measured: {one_line(e)}"
            warn(f"{title} is not measured: {one_line(e)}")
    if nets.lpips is not None:
        nets.described["lpips"] = f"{lpips_net}: {nets.described['lpips']}"
    return nets


# ------------------------------------------------------------------------------------------------ inputs
@dataclass
class EvalItem:
    """One image: `path` (None when an argument matched nothing), its camera label (aligned crops) or None (a photo
    to align), the folder it was found under (names are relative to it), its output name, or why it cannot be
    measured."""
    index: int
    source: str
    path: Path | None
    camera: np.ndarray | None = None
    name: str = ""
    error: str | None = None
    root: Path | None = None


def _label_array(label) -> np.ndarray | None:
    numbers = isinstance(label, (list, tuple)) and all(type(v) in (int, float) for v in label)
    try:
        arr = np.asarray(label, dtype=np.float32) if numbers else None
    except OverflowError:
        return None
    return arr if arr is not None and arr.shape == (25,) and np.isfinite(arr).all() else None


def _labelled_items(label_path: Path, out_root: Path) -> list[EvalItem]:
    """Items of an EG3D labels file; images of its folder without a label are skipped items."""
    from goae.cli import PHOTO_SUFFIXES

    root = label_path.parent
    try:
        entries = json.loads(label_path.read_text())["labels"]
        if isinstance(entries, dict):
            entries = list(entries.items())
        if not isinstance(entries, list):
            raise TypeError("'labels' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return [EvalItem(0, str(label_path), None, error=f"not an EG3D labels file ({{\"labels\": [[relpath, "
                                                                f"[25 floats]], ...]}}): {one_line(e)[:200]}")]
    items, listed = [], set()
    for entry in entries:
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str)):
            items.append(EvalItem(0, str(label_path), None, error=f"malformed entry {str(entry)[:60]} in {label_path}"))
            continue
        rel, label = entry
        path = root / rel
        listed.add(path.resolve())
        cam = _label_array(label)
        if cam is None:
            error = f"its label in {label_path.name} is not 25 finite numbers"
        elif not path.exists():
            error = f"listed in {label_path.name} but the file does not exist"
        else:
            try:
                check_regular_file(path, "photo")   # a FIFO would block the run forever
                error = None
            except (NotARegularFile, OSError) as e:
                error = one_line(e)
        items.append(EvalItem(0, str(path), path, None if error else cam, error=error, root=root))
    out = out_root.resolve()
    for p in sorted(root.rglob("*")):
        if (p.suffix.lower() in PHOTO_SUFFIXES and p.is_file() and p.resolve() not in listed
                and not any(part.startswith(".") for part in p.relative_to(root).parts)
                and out not in p.resolve().parents):
            items.append(EvalItem(0, str(p), p, error=f"no camera label in {label_path.name}", root=root))
    return items


def gather_inputs(args: Sequence[str], out_root: str | os.PathLike, labels: str = "dataset.json") -> list[EvalItem]:
    """Labels files / folders with a labels file (aligned crops) and photos, folders, globs (to align), in order,
    each file once; every item gets its unique output name (module docstring)."""
    from goae.cli import expand_inputs

    out_root = Path(out_root)
    items: list[EvalItem] = []
    for arg in args:
        p = Path(arg)
        if p.is_file() and p.suffix.lower() == ".json":
            items += _labelled_items(p, out_root)
        elif p.is_dir() and (p / labels).is_file():
            items += _labelled_items(p / labels, out_root)
        else:
            for it in expand_inputs([arg], out_root):
                source = str(it.path) if it.path is not None else arg
                if it.error is not None:  # matched nothing, or not a regular file (never opened)
                    items.append(EvalItem(0, source, it.path, error=it.error, root=it.root))
                elif it.kind == "video":
                    items.append(EvalItem(0, source, it.path, error="a clip: goae eval measures photos", root=it.root))
                else:
                    items.append(EvalItem(0, source, it.path, root=it.root))
    seen, unique = set(), []
    for it in items:
        key = (it.path.resolve() if it.path is not None else None, it.source)
        if it.path is not None and key in seen:
            continue
        seen.add(key)
        it.index = len(unique)
        unique.append(it)
    _name_items(unique, out_root)
    return unique


def _name_items(items: list[EvalItem], out_root: Path) -> None:
    """Images to measure: `goae invert`'s folder names over images/ (goae.cli.input_folders: stable per input).
    Skipped items only need a record: their safe name plus a hash of their source, never a measured one's name."""
    from goae.cli import Item, input_folders
    from goae.export import safe_name

    measurable = [it for it in items if it.path is not None and it.error is None]
    named = [Item(it.index, it.source, it.path, "photo", root=it.root) for it in measurable]
    input_folders(named, out_root / "images")
    for it, n in zip(measurable, named):
        if n.error is not None:
            it.error = n.error
        else:
            it.name = n.folder.name
    used = {it.name.casefold() for it in items if it.name}
    for it in items:
        if it.name:
            continue
        base = safe_name(Path(it.source).stem, "input").encode("utf-8")[:80].decode("utf-8", "ignore")
        name = f"{base}-{hashlib.sha256(it.source.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"
        n = 1
        while (candidate := name if n == 1 else f"{name}-{n}").casefold() in used:
            n += 1
        it.name = candidate
        used.add(candidate.casefold())


# ---------------------------------------------------------------------------------------------- measuring
def _to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32).copy()).permute(2, 0, 1)[None] / 127.5 - 1


def _to_pil(x: torch.Tensor, size: int = 256) -> Image.Image:
    x = M.prepare(x[:1], size)[0].clamp(-1, 1)
    return Image.fromarray(((x + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy())


@torch.no_grad()
def measure(pipe, nets: MetricNetworks, image: Image.Image, camera, opts: EvalOptions) -> tuple[dict, dict, dict]:
    """Invert one aligned crop and measure it -> (metrics, tiles (PIL images for the report), Inception features)."""
    dev = pipe.device
    x = _to_tensor(image).to(dev)
    out = pipe(image, camera, output_type=None)
    y = out.image.float()
    a, b = M.prepare(x, opts.resolution), M.prepare(y, opts.resolution)
    values = {"mse": float(M.mse(b, a)[0]), "ssim": float(M.ssim(b, a)[0])}
    if nets.lpips is not None:
        values["lpips"] = float(nets.lpips(b, a)[0])
    tiles = {"input": _to_pil(x), "reconstruction": _to_pil(y)}
    views = None
    if opts.yaws:
        cams = pipe.view_camera(list(opts.yaws), opts.pitch).to(dev)
        views = torch.cat([pipe.render_view(out, cams[i:i + 1], output_type=None).image.float()
                           for i in range(len(opts.yaws))])
        for yaw, v in zip(opts.yaws, views):
            tiles[M.view_key(yaw, opts.pitch)] = _to_pil(v[None])
    if nets.identity is not None:
        values["id"] = float(M.identity_similarity(nets.identity, y, x)[0])
        if views is not None:
            sims = M.identity_similarity(nets.identity, views, x.expand(len(views), -1, -1, -1))
            for yaw, s in zip(opts.yaws, sims):
                values[M.view_key(yaw, opts.pitch)] = float(s)
    feats = {}
    if nets.inception is not None:
        feats["input"] = nets.inception.features(x).cpu()
        feats["reconstruction"] = nets.inception.features(y).cpu()
        if views is not None:
            feats["views"] = nets.inception.features(views).cpu()
    return values, tiles, feats


@torch.no_grad()
def measure_batch(pipe, nets: MetricNetworks, x: torch.Tensor, cameras: torch.Tensor, resolution: int = 256,
                  chunk: int = 4) -> dict[str, list[float]]:
    """Input-view metrics of aligned crops x [N,3,512,512] in [-1, 1] with their cameras [N,25] (training's held-out
    evaluation) -> metric name -> N values. LPIPS / identity only where their network is loaded."""
    values: dict[str, list[float]] = {}
    for i in range(0, len(x), chunk):
        xi = x[i:i + chunk].float().to(pipe.device)
        y = pipe(xi, cameras[i:i + chunk], output_type=None).image.float()
        a, b = M.prepare(xi, resolution), M.prepare(y, resolution)
        part = {"mse": M.mse(b, a), "ssim": M.ssim(b, a)}
        if nets.lpips is not None:
            part["lpips"] = nets.lpips(b, a)
        if nets.identity is not None:
            part["id"] = M.identity_similarity(nets.identity, y, xi)
        for k, v in part.items():
            values.setdefault(k, []).extend(v.float().cpu().tolist())
    return values


def settings_key(pipe, nets: MetricNetworks, opts: EvalOptions) -> str:
    """What a record was measured with: resume keeps only records of the same key."""
    blob = json.dumps({"weights": getattr(pipe, "weights_label", ""), "resolution": opts.resolution,
                       "yaws": list(opts.yaws), "pitch": opts.pitch, "networks": nets.described,
                       "precision": str(getattr(getattr(pipe, "_fast_path", None), "precision", "fp32"))},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _record_path(out_root: Path, name: str) -> Path:
    return out_root / "records" / f"{name}.json"


def read_record(out_root: Path, name: str) -> dict | None:
    try:
        rec = json.loads(_record_path(out_root, name).read_text())
        return rec if isinstance(rec, dict) and rec.get("name") == name else None
    except (OSError, ValueError):
        return None


def _write_record(out_root: Path, rec: dict) -> None:
    atomic_write_bytes(_record_path(out_root, rec["name"]), json.dumps(rec, indent=1).encode())


def _process(pipe, nets, item: EvalItem, out_root: Path, opts: EvalOptions, key: str) -> dict:
    rec = {"index": item.index, "name": item.name, "input": item.source, "status": "skipped", "reason": None,
           "aligned_by": "labels" if item.camera is not None else "goae", "metrics": {}, "settings": key}
    if item.error is not None:
        rec["reason"] = item.error
        return rec
    t0 = time.perf_counter()
    try:
        if item.camera is not None:  # an aligned crop with its label
            from goae.align import load_image
            image, camera = load_image(item.path), item.camera
            if image.size[0] != image.size[1]:
                raise ValueError(f"{image.size[0]}x{image.size[1]} is not a square crop (EG3D crops are square)")
            if image.size != (512, 512):
                image = image.resize((512, 512), Image.LANCZOS)
        else:
            face = pipe.domain.align(item.path)
            image, camera = face.image, face.camera
        values, tiles, feats = measure(pipe, nets, image, camera, opts)
    except Exception as e:  # one image's failure is its own record (no face, unreadable file, ...)
        rec["reason"] = one_line(e)
        return rec
    rec.update(status="ok", metrics=values, seconds=round(time.perf_counter() - t0, 3))
    with atomic_dir(out_root / "images" / item.name, overwrite=True) as tmp:
        for name, im in tiles.items():
            im.save(tmp / f"{name}.png")
        # which input this folder holds: input_folders keeps its name with it when inputs are added
        (tmp / "result.json").write_text(json.dumps({"photo": str(item.path.resolve())}))
        if feats:
            from safetensors.torch import save_file
            save_file({k: v.contiguous() for k, v in feats.items()}, str(tmp / "inception.safetensors"))
    return rec


def evaluate(pipe, inputs: Sequence[str], out: str | os.PathLike, nets: MetricNetworks | None = None,
             options: EvalOptions | None = None, resume: bool = False, progress: bool = True,
             log: Callable[[str], None] | None = None) -> dict | None:
    """Measure every input (module docstring) and write the report (goae.eval.report) into `out`. Returns the
    summary (rank 0; None on the other ranks of a torchrun job)."""
    from tqdm.auto import tqdm

    from goae.cli import world as torchrun_world
    from goae.eval import report

    opts, nets = options or EvalOptions(), (nets or MetricNetworks()).to(pipe.device)
    out_root = Path(out)
    (out_root / "records").mkdir(parents=True, exist_ok=True)
    log = log or (lambda m: tqdm.write(m, file=sys.stderr))
    rank, world, _ = torchrun_world()
    items = gather_inputs(inputs, out_root, opts.labels)
    key = settings_key(pipe, nets, opts)
    mine = [it for it in items if it.index % world == rank]
    label = f"[rank {rank}] " if world > 1 else ""
    for item in tqdm(mine, desc=f"{label}goae eval", unit="image", file=sys.stderr, disable=not progress or len(mine) < 2):
        old = read_record(out_root, item.name) if resume else None
        if old is not None and old.get("status") == "ok" and old.get("settings") == key and old.get("input") == item.source \
                and (out_root / "images" / item.name).is_dir():
            log(f"{label}{item.source}: measured before (resumed)")
            continue
        rec = _process(pipe, nets, item, out_root, opts, key)
        _write_record(out_root, rec)
        log(f"{label}{item.source}: " + ("ok " + ", ".join(f"{k} {v:.4f}" for k, v in rec["metrics"].items())
                                         if rec["status"] == "ok" else f"skipped: {rec['reason']}"))
    if world > 1:
        import datetime

        import torch.distributed as dist
        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        dist.barrier()  # every record is on disk
        if rank != 0:
            return None
    records = [read_record(out_root, it.name) or {"index": it.index, "name": it.name, "input": it.source,
                                                  "status": "skipped", "reason": "no record was written"}
               for it in items]
    from goae.edit import random_weights
    run = {"weights": getattr(pipe, "weights_label", "unlabelled"), "random_weights": random_weights(pipe),
           "device": device_name(pipe.device),
           "processes": world, "options": asdict(opts), "networks": dict(nets.described), "settings": key}
    return report.write_report(out_root, records, run)
