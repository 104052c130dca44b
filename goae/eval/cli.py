"""`python -m goae.eval INPUT... --out DIR --weights W` (the lead's `goae eval`): parses, calls goae.eval.evaluate.

Exit codes: 0 when every image was measured, 1 when some were skipped (the summary says why), 2 for bad arguments
or set-up (weights, device). `--json` prints the summary on stdout, nothing else goes there.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from goae.io import exit_with_error, one_line


def _yaws(text: str) -> tuple[float, ...]:
    out = []
    for part in filter(None, text.split(",")):
        try:
            v = float(part)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--views expects yaw degrees separated by commas, got {part!r}") from None
        if not -180 <= v <= 180:  # also refuses nan
            raise argparse.ArgumentTypeError(f"view yaw must be a finite number of degrees in [-180, 180], got {part!r}")
        out.append(v)
    return tuple(out)


def build_parser(prog: str = "goae eval") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Measure GOAE inversions: MSE, LPIPS, SSIM, identity at the "
                                "input view; identity at novel views; FID when Inception weights are given.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="EG3D labels files (dataset.json) or folders holding one (aligned 512 crops with cameras), or "
                        "photos, folders, globs of photos that goae aligns itself")
    p.add_argument("--out", required=True, help="output folder: eval.json, metrics.csv, report.html/png, records/, images/")
    p.add_argument("--weights", default=None, help="pipeline folder or Hub repo id (default $GOAE_WEIGHTS); 'random' / "
                                                   "'random-small' to try it (the numbers then mean nothing)")
    p.add_argument("--seed", type=int, default=0, help="seed of random weights")
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda if available)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "auto", "bf16", "fp16"))
    p.add_argument("--labels", default="dataset.json", help="labels file name inside a folder of aligned crops")
    p.add_argument("--resolution", type=int, default=256, help="input-view metrics at this size (pSp/e4e: 256)")
    p.add_argument("--views", type=_yaws, default=(-30.0, 30.0), metavar="YAW,YAW",
                   help="novel-view yaws in degrees (default -30,30; '' for none)")
    p.add_argument("--pitch", type=float, default=0.0, help="pitch of the novel views, degrees")
    p.add_argument("--lpips-net", default="alex", choices=("alex", "vgg"), help="LPIPS trunk (published tables: alex)")
    p.add_argument("--lpips-trunk", default=None, help="torchvision alexnet-owt-7be5be79.pth / vgg16-397923af.pth")
    p.add_argument("--lpips-lin", default=None, help="lpips' weights/v0.1/alex.pth (or vgg.pth)")
    p.add_argument("--id-weights", default=None, help="model_ir_se50.pth (pSp/e4e)")
    p.add_argument("--inception", default=None, help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth: FID")
    p.add_argument("--metric-networks", default="files", choices=("files", "random"),
                   help="'random': seeded random LPIPS/identity (and Inception with --inception random) for trying the "
                        "tool and tests; the numbers are not measurements")
    p.add_argument("--best-by", default="lpips", help="the report's best/worst images by this metric (default lpips)")
    p.add_argument("--sheet-rows", type=int, default=4, help="best and worst images in the contact sheet, each")
    p.add_argument("--resume", action="store_true", help="keep images measured before with the same settings")
    p.add_argument("--json", action="store_true", help="print the summary (eval.json) on stdout")
    p.add_argument("--verbose", action="store_true", help="keep mediapipe/TFLite's native log lines")
    return p


def main(argv: Sequence[str] | None = None, prog: str = "goae eval") -> int:
    from goae.cli import native_log_filter, quiet_native_logs

    args = build_parser(prog).parse_args(list(sys.argv[1:] if argv is None else argv))
    if args.resolution < 16 or args.resolution > 1024:
        return exit_with_error(prog, f"--resolution must be in [16, 1024], got {args.resolution}", 2)
    quiet_native_logs(args.verbose)
    with native_log_filter(enabled=not args.verbose):
        return _run(args, prog)


def _run(args, prog: str) -> int:
    from goae.edit import random_weights
    from goae.eval.runner import EvalOptions, evaluate, load_networks
    from goae.export import check_weights
    from goae.pipeline import load_pipeline
    from goae.runtime import setup_runtime

    try:
        device = setup_runtime(args.device or "auto")
        pipe = load_pipeline(args.weights, seed=args.seed, device=device)
        check_weights(pipe)
        if args.precision != "fp32":
            pipe.enable_fast_path(args.precision)
    except Exception as e:
        return exit_with_error(prog, e, 2)
    if random_weights(pipe):
        print(f"{prog}: NOTE: the pipeline runs on RANDOM weights: these numbers measure nothing.", file=sys.stderr)
    nets = load_networks(args.lpips_trunk, args.lpips_lin, args.lpips_net, args.id_weights, args.inception,
                         random=args.metric_networks == "random", seed=args.seed,
                         warn=lambda m: print(f"{prog}: {m}", file=sys.stderr))
    opts = EvalOptions(resolution=args.resolution, yaws=args.views, pitch=args.pitch, best_by=args.best_by,
                       sheet_rows=args.sheet_rows, labels=args.labels)
    try:
        summary = evaluate(pipe, args.inputs, args.out, nets, opts, resume=args.resume)
    except OSError as e:
        return exit_with_error(prog, f"cannot write {args.out}: {one_line(e)}", 2)
    if summary is None:  # a torchrun rank other than 0
        return 0
    print(f"{summary['measured']} measured, {summary['skipped']} skipped"
          + "".join(f"; {n} x {r}" for r, n in summary["skipped_reasons"].items())
          + f" -> {args.out}/eval.json, report.html", file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps(summary, indent=1) + "\n")
        sys.stdout.flush()
    return 1 if summary["skipped"] else 0
