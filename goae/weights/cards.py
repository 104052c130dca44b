"""Model cards: the README.md (Hub front matter + licence + provenance + usage) of every folder goae writes.

The weights goae converts or trains are derived from NVIDIA's EG3D generator (non-commercial licence)
and, for GOAE checkpoints, the GOAE authors' release (no licence published): a folder pushed to the Hub
must say so. `write_model_card` is called by `GOAEPipeline.save_pretrained`, the converter and training.
"""
from __future__ import annotations

import datetime
import json
import os
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from goae import __version__
from goae.io import atomic_write_bytes

CARD_NAME = "README.md"
# The weights' terms (every card names them; the download command shows them too).
EG3D_LICENSE_NAME = "nvidia-source-code-license-nc"  # the card metadata's license_name
EG3D_LICENCE_URL = "https://github.com/NVlabs/eg3d/blob/main/LICENSE.txt"
GOAE_REPO_URL = "https://github.com/jiangyzy/GOAE"
# The training set of each domain's EG3D generator (goae.domains) and the dataset's own terms.
TRAINING_DATA = {
    "human": ("FFHQ", "https://github.com/NVlabs/ffhq-dataset",
              "CC BY-NC-SA 4.0 by NVIDIA Corporation (each photo keeps its own Flickr licence)"),
    "cat": ("AFHQv2 cats", "https://github.com/clovaai/stargan-v2", "CC BY-NC 4.0 by NAVER Corporation"),
}


@dataclass
class Provenance:
    """What a folder was made from and how. sources: file name -> sha256 (official checkpoints, etc.)."""

    sources: dict[str, str] = field(default_factory=dict)
    command: str | None = None
    note: str | None = None  # e.g. "random weights (seed 0)" or "trained by train/run.py"
    domain: str = "human"
    # How the converter read checkpoints stored differently from the released FFHQ ones (goae.weights.checkpoints'
    # key mapping): one line per rule it applied, e.g. "encoder checkpoint encoder_AFHQ.pt: removed ...".
    key_mapping: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # further provenance lines (a domain chosen against the pivot, ...)
    # The last held-out evaluation of a training run (train.stages.HeldOutEval.last): step, images, metric means,
    # networks and conventions (goae.eval).
    evaluation: dict | None = None


def current_command() -> str:
    """The command line of this process, shell-quoted (argv[0] shortened to its file name)."""
    argv = [Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python", *sys.argv[1:]]
    return " ".join(shlex.quote(a) for a in argv)


def model_card(kind: str, provenance: Provenance, repo_hint: str = "path/to/this/folder") -> str:
    """The card text. kind: 'pipeline' (GOAEPipeline folder) or 'generator' (EG3DGenerator folder)."""
    tags = ["goae", "eg3d", "gan-inversion", "3d-gan-inversion", "tri-plane", "image-to-3d", provenance.domain]
    front = {"library_name": "goae", "pipeline_tag": "image-to-3d", "license": "other",
             "license_name": EG3D_LICENSE_NAME, "license_link": EG3D_LICENCE_URL, "tags": tags}
    lines = ["---", *(f"{k}: {json.dumps(v)}" for k, v in front.items()), "---", ""]
    title = "GOAE pipeline" if kind == "pipeline" else "EG3D generator"
    lines += [f"# {title} ({provenance.domain} domain)", "",
              "GOAE (Yuan et al., *Make Encoder Great Again in 3D GAN Inversion through Geometry and "
              "Occlusion-Aware Encoding*, ICCV 2023) on NVIDIA's EG3D, as a goae folder "
              "(`GOAEPipeline.from_pretrained`).", "",
              "## Licence: non-commercial weights", "",
              f"These weights are derived from NVIDIA's EG3D release, under the [NVIDIA Source Code License-NC]"
              f"({EG3D_LICENCE_URL}): research and other non-commercial use only."]
    if provenance.domain in TRAINING_DATA:
        name, link, terms = TRAINING_DATA[provenance.domain]
        lines += ["", f"The EG3D generator was trained by NVIDIA on [{name}]({link}) (domain `{provenance.domain}`); "
                      f"that dataset is licensed {terms}."]
    if kind == "pipeline":
        lines += ["", f"The encoder and AFA weights, when converted from the official GOAE checkpoints "
                      f"({GOAE_REPO_URL}), keep their authors' terms: that repository publishes no licence, so "
                      "ask its authors before any use beyond research."]
    lines += ["", "goae's code is Apache-2.0; that licence does not cover these weights.", "",
              "## Provenance", "", f"- domain: {provenance.domain}"
              + (f" (generator trained on {TRAINING_DATA[provenance.domain][0]})" if provenance.domain in TRAINING_DATA else ""),
              f"- goae version: {__version__}",
              f"- made: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}"]
    if provenance.command:
        lines.append(f"- command: `{provenance.command}`")
    if provenance.note:
        lines.append(f"- {provenance.note}")
    lines += [f"- {n}" for n in provenance.notes]
    if provenance.sources:
        lines += ["", "| source file | sha256 |", "|---|---|"]
        lines += [f"| {name} | `{digest}` |" for name, digest in sorted(provenance.sources.items())]
    if provenance.key_mapping:
        lines += ["", "### Key mapping", "",
                  "Checkpoints stored differently from the released FFHQ ones were read with these rules "
                  "(goae.weights.checkpoints); the result matched the model's keys and shapes exactly:", ""]
        lines += [f"- {line}" for line in provenance.key_mapping]
    if provenance.evaluation:
        lines += _evaluation_lines(provenance.evaluation)
    lines += ["", "## Usage", "", "```python"]
    if kind == "pipeline" and provenance.domain == "cat":
        lines += ["from goae import GOAEPipeline",
                  f'pipe = GOAEPipeline.from_pretrained("{repo_hint}")',
                  'crop = pipe.domain.align("cat.jpg")  # the cat aligner; frontal camera unless yaw=/pitch= are given',
                  "out = pipe(crop.image, crop.camera)",
                  "out.images[0].save(\"reconstruction.png\")"]
    elif kind == "pipeline":
        lines += ["from goae import GOAEPipeline, align_face",
                  f'pipe = GOAEPipeline.from_pretrained("{repo_hint}")',
                  'face = align_face("photo.jpg")',
                  "out = pipe(face.image, face.camera)",
                  "out.images[0].save(\"reconstruction.png\")"]
    else:
        lines += ["from goae import EG3DGenerator", f'G = EG3DGenerator.from_pretrained("{repo_hint}")']
    lines += ["```", ""]
    return "\n".join(lines)


def _evaluation_lines(ev: dict) -> list[str]:
    """The card's "Evaluation" section: the metric means of the last held-out evaluation and how they were taken."""
    means = ev.get("metrics") or {}
    lines = ["", "## Evaluation", "",
             f"Last held-out evaluation during training: step {ev.get('step')}, {ev.get('images')} images "
             f"({ev.get('labels')}), metrics at {ev.get('resolution')} px with goae.eval's conventions "
             "(README, \"Measuring quality\").", "", "| metric | mean |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" for k, v in means.items()]
    for name, text in (ev.get("networks") or {}).items():
        lines.append(f"- {name}: {text}")
    return lines


def write_model_card(folder: str | os.PathLike, kind: str, provenance: Provenance | None = None,
                     repo_hint: str | None = None) -> Path:
    """Write folder/README.md atomically (replacing an older card)."""
    folder = Path(folder)
    text = model_card(kind, provenance or Provenance(), repo_hint or folder.name)
    return atomic_write_bytes(folder / CARD_NAME, text.encode())
