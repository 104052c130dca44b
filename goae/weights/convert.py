"""Official checkpoints -> goae folders, written atomically, with a model card that records their sources.

Cats: NVIDIA's `afhqcats512-128.pkl` converts like the FFHQ pickle (its kwargs are read, not assumed; it
differs only in rendering_kwargs.avg_camera_pivot [0, 0, -0.06]). A folder records its domain (`--domain`,
default human): a generator whose pivot is AFHQ's is refused without `--domain` rather than guessed.
How the files are read: goae.weights.unpickle (no pickle code runs) and goae.weights.checkpoints.

CLI:  goae convert eg3d ffhqrebalanced512-128.pkl weights/generator [--domain human|cat] [--overwrite]
      goae convert goae --eg3d PKL --encoder encoder_FFHQ.pt --afa afa_FFHQ.pt OUT [--domain human|cat]
                        [--directions ws_edit/] [--overwrite]
      (`python -m goae.convert ...` is the same command.)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from goae.domains import DEFAULT_DOMAIN, DOMAINS, domain_of_pivot, get_domain
from goae.edit import DIRECTION_SUFFIXES, DIRECTIONS_FOLDER, usable_directions, write_directions
from goae.io import atomic_dir, check_output_dir, exit_with_error, sha256_file
from goae.weights.cards import Provenance, current_command, write_model_card
from goae.weights.checkpoints import component_class, load_goae_checkpoint, load_official_generator
from goae.weights.checks import check_pipeline_folder
from goae.weights.errors import (CheckpointError, CheckpointNotFoundError, DomainMismatchError, DomainMismatchWarning,
                                 WeightsFolderError, WrongCheckpointError)

# ----------------------------------------------------------------------------- EG3D


def convert_eg3d(pkl_path: str | os.PathLike, out_dir: str | os.PathLike, overwrite: bool = False,
                 domain: str | None = None) -> Path:
    """Write a diffusers-style folder (config.json + diffusion_pytorch_model.safetensors) atomically. `domain`
    ('human', 'cat'; None: human unless the generator's pivot is AFHQ's, which is refused) goes in the card."""
    from safetensors.torch import load_file

    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)  # fail before the (slow) load
    _check_domain_name(domain)
    G = load_official_generator(pkl_path)
    domain, notes = choose_domain(domain, G, pkl_path)
    expected = G.state_dict()
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        G.save_pretrained(tmp, safe_serialization=True)
        written = load_file(tmp / "diffusion_pytorch_model.safetensors")  # verify before publishing
        if written.keys() != expected.keys() or any(not torch.equal(written[k], expected[k]) for k in expected):
            raise CheckpointError(f"verification of the written weights in {tmp} failed")
        write_model_card(tmp, "generator", _provenance({"eg3d": pkl_path}, domain=domain, notes=notes),
                         repo_hint=out_dir.name)
    return out_dir


def _provenance(sources: Mapping[str, str | os.PathLike], domain: str = "human", key_mapping: Sequence[str] = (),
                notes: Sequence[str] = (), known_sha256: Mapping[str, str] | None = None) -> "Provenance":
    """Model-card provenance of a conversion: each source file's name and sha256 (hashed here unless the caller
    already knows it: known_sha256 by file name), and the command."""
    known = known_sha256 or {}
    return Provenance(sources={Path(p).name: known.get(Path(p).name) or sha256_file(p) for p in sources.values()},
                      command=current_command(),
                      note="converted from the official checkpoints by goae convert", domain=domain,
                      key_mapping=list(key_mapping), notes=list(notes))


# ----------------------------------------------------------------------------- domains


def _warn(line: str) -> None:
    print(f"goae.convert: {line}", file=sys.stderr)


def _check_domain_name(domain: str | None) -> None:
    if domain is not None and domain not in DOMAINS:
        raise CheckpointError(f"unknown domain {domain!r}; choose from {sorted(DOMAINS)}")


def choose_domain(domain: str | None, generator, source: str | os.PathLike) -> tuple[str, list[str]]:
    """The domain a converted folder records, and notes for its card. None means "not given": human, unless
    the generator's avg_camera_pivot is that of another domain's released model (AFHQ cats: [0, 0, -0.06]),
    which is refused rather than guessed. A domain given against the pivot is kept, with a warning."""
    pivot = getattr(generator, "rendering_kwargs", {}).get("avg_camera_pivot")
    implied = domain_of_pivot(pivot)
    src = Path(source).name
    if domain is None:
        if implied is not None and implied.name != DEFAULT_DOMAIN:
            raise DomainMismatchError(
                f"{source}: its avg_camera_pivot {list(pivot)} is that of EG3D's {implied.dataset} model "
                f"({implied.generator_file}), so it is probably not a {DEFAULT_DOMAIN} model; say which photos it "
                f"inverts: --domain {implied.name}, or --domain {DEFAULT_DOMAIN} to override (library: domain='{implied.name}')")
        return DEFAULT_DOMAIN, []
    want = get_domain(domain)
    if implied is not None and implied.name != want.name:
        note = (f"domain '{want.name}' was chosen by the command, although the generator {src} has the "
                f"avg_camera_pivot {list(pivot)} of EG3D's {implied.dataset} model ({implied.generator_file})")
        _warn(f"warning: {note}")
        return want.name, [note]
    return want.name, []


@contextlib.contextmanager
def _blame(path: str | os.PathLike):
    """A CheckpointError raised in the block is about the file `path` (its `path`), for callers that act on it."""
    try:
        yield
    except CheckpointError as e:
        e.path = e.path or Path(path)
        raise


# ----------------------------------------------------------------------------- edit directions


def _direction_files(directions) -> list[Path] | None:
    """The files of a directions folder (hidden ones aside), or the list given; None for none (or an empty list)."""
    if directions is None:
        return None
    if isinstance(directions, (str, os.PathLike)):
        if not Path(directions).is_dir():
            raise CheckpointNotFoundError(f"edit directions folder {directions} does not exist")
        return [f for f in sorted(Path(directions).iterdir()) if not f.name.startswith(".")]
    return sorted(Path(f) for f in directions) or None


def _copy_directions(files: Sequence[Path], out: Path, num_ws: int, w_dim: int, domain: str = "human") -> list[str]:
    """The edit direction files that fit the model (goae.edit.usable_directions) -> out/*.safetensors, so that an
    app loading the pipeline folder gets its edit sliders; each saved with `domain` in its metadata. Only the
    folder's domain is copied (the official `cat_*` files are AFHQ cats, the others FFHQ faces): every file left
    out is printed with the reason. Returns the names copied."""
    for f in files:
        if not f.is_file() or f.suffix not in DIRECTION_SUFFIXES:
            _warn(f"edit direction {f.name} left out: not a direction file ({', '.join(DIRECTION_SUFFIXES)})")
    found, left_out, _ = usable_directions([f for f in files if f.is_file() and f.suffix in DIRECTION_SUFFIXES],
                                           num_ws, w_dim, domain=domain)
    for name, why in left_out:
        _warn(f"edit direction {name} left out: {why}")
    names = write_directions(out, found, num_ws)
    _warn(f"copied {len(names)} {get_domain(domain).name} edit direction(s)" + (f": {', '.join(names)}" if names else ""))
    return names


def convert_goae(
    eg3d_pkl: str | os.PathLike,
    encoder_pt: str | os.PathLike,
    afa_pt: str | os.PathLike,
    out_dir: str | os.PathLike,
    overwrite: bool = False,
    encoder_config: Mapping[str, Any] | None = None,
    afa_config: Mapping[str, Any] | None = None,
    directions: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    domain: str | None = None,
    known_sha256: Mapping[str, str] | None = None,
) -> Path:
    """Official EG3D pickle + encoder_FFHQ.pt + afa_FFHQ.pt (or the cat ones) -> GOAEPipeline folder
    (model_index.json with its `domain`, generator/, encoder/, afa/, README.md model card with the sources'
    sha256 and any key mapping), written atomically. The configs default to the released ones.
    `domain`: 'human' or 'cat'; None is human, but a generator with AFHQ's pivot is then refused (say which).
    `directions`: a folder of edit directions (the official ws_edit/*.npy), or a list of such files; those of the
    domain are copied, validated and tagged with it, into the folder's directions/.
    `known_sha256`: the sources' sha256 by file name where the caller has them already (a download checked
    them), so the model card does not hash the files again."""
    from goae.pipeline import GOAEPipeline  # lazily: diffusers and the model code (seconds) only for this

    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)  # fail before the (slow) load
    _check_domain_name(domain)
    direction_files = _direction_files(directions)
    # Every file and config is checked (models on the meta device) before a real model is built.
    with _blame(encoder_pt):
        enc = load_goae_checkpoint(encoder_pt, "encoder", encoder_config)
    with _blame(afa_pt):
        afa_ck = load_goae_checkpoint(afa_pt, "afa", afa_config)
    with _blame(eg3d_pkl):
        generator = load_official_generator(eg3d_pkl)
        domain, notes = choose_domain(domain, generator, eg3d_pkl)
    key_mapping = enc.key_mapping + afa_ck.key_mapping
    for line in key_mapping:
        _warn(line)
    encoder, afa = component_class("encoder")(**enc.config), component_class("afa")(**afa_ck.config)
    encoder.load_state_dict(enc.state_dict, strict=True)
    afa.load_state_dict(afa_ck.state_dict, strict=True)
    pipe = GOAEPipeline(generator=generator, encoder=encoder.eval(), afa=afa.eval(), domain=domain)
    provenance = _provenance({"eg3d": eg3d_pkl, "encoder": encoder_pt, "afa": afa_pt}, domain=domain,
                             key_mapping=key_mapping, notes=notes, known_sha256=known_sha256)
    pipe.provenance = provenance
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        pipe.save_pretrained(tmp, provenance=provenance, repo_hint=out_dir.name)  # with its model card
        if direction_files is not None:
            shipped = _copy_directions(direction_files, tmp / DIRECTIONS_FOLDER, generator.num_ws, generator.w_dim, domain)
            where = sorted({f.parent.name for f in direction_files}) or [Path(directions).name]
            provenance.notes.append(f"edit directions ({domain}): {', '.join(shipped) or 'none'}, from {', '.join(where)}/")
            write_model_card(tmp, "pipeline", provenance, repo_hint=out_dir.name)
        try:  # the folder must pass the check that loading it will do (and the parts must fit together)
            with warnings.catch_warnings():  # a domain given against the pivot was reported above already
                warnings.simplefilter("ignore", DomainMismatchWarning)
                check_pipeline_folder(tmp)
        except WeightsFolderError as e:
            raise WrongCheckpointError(f"the converted pipeline is not usable: {str(e).replace(str(tmp), str(out_dir))}") from None
    return out_dir


# ----------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None, prog: str = "python -m goae.convert") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Convert official EG3D/GOAE checkpoints to goae folders (no pickle code is run).")
    sub = parser.add_subparsers(dest="command", required=True)
    domain_help = ("what the weights invert: human (FFHQ, the default) or cat (AFHQ); recorded in the folder. "
                   "A generator with AFHQ's camera pivot is refused without it")
    p = sub.add_parser("eg3d", help="EG3D network pickle -> generator folder (config.json + safetensors)")
    p.add_argument("pkl", help="official network pickle, e.g. ffhqrebalanced512-128.pkl or afhqcats512-128.pkl")
    p.add_argument("out_dir", help="output folder (written atomically)")
    p.add_argument("--domain", choices=sorted(DOMAINS), help=domain_help)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g = sub.add_parser("goae", help="EG3D pickle + GOAE encoder + AFA checkpoints -> full GOAE pipeline folder")
    g.add_argument("--eg3d", required=True, help="ffhqrebalanced512-128.pkl (cats: afhqcats512-128.pkl)")
    g.add_argument("--encoder", required=True, help="encoder_FFHQ.pt (cats: the release's cat encoder checkpoint)")
    g.add_argument("--afa", required=True, help="afa_FFHQ.pt (cats: the release's cat AFA checkpoint)")
    g.add_argument("out_dir")
    g.add_argument("--domain", choices=sorted(DOMAINS), help=domain_help)
    g.add_argument("--overwrite", action="store_true")
    g.add_argument("--directions", help="folder of edit directions (e.g. the official ws_edit/*.npy) to ship inside; "
                                        "only those of the domain are copied")
    args = parser.parse_args(argv)
    try:
        if args.command == "eg3d":
            out = convert_eg3d(args.pkl, args.out_dir, overwrite=args.overwrite, domain=args.domain)
        else:
            out = convert_goae(args.eg3d, args.encoder, args.afa, args.out_dir, overwrite=args.overwrite,
                               directions=args.directions, domain=args.domain)
    except (CheckpointError, FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
            PermissionError, ImportError) as e:
        return exit_with_error(prog, e, 2)
    except KeyboardInterrupt:
        return exit_with_error(prog, "interrupted; nothing was written", 130)
    except Exception as e:  # a full disk, no memory, or a bug: still one line, and nothing half-written
        return exit_with_error(prog, e, 1)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
