"""Where weights come from: a local folder as-is, otherwise a Hugging Face Hub repo (download or cache).

`resolve_pretrained` is the one place that decides where weights come from, so every `from_pretrained` in
goae gives the same clear error when they are missing (e.g. offline and not cached), including the commands
that fetch or convert them. The folder `goae download` fills is goae.paths.default_weights_folder().
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from goae.weights.errors import WeightsNotFoundError


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")

HOW_TO_GET_WEIGHTS = (
    "To get the official weights in one command (after reading their non-commercial licences): "
    "`goae download --accept-licences`. Or (a) download a converted folder while online: `hf download {repo}` "
    "(or `huggingface-cli download {repo}`), then run again with HF_HUB_OFFLINE=1 if you like; or "
    "(b) convert the official checkpoints yourself and pass the output folder instead of a repo id: "
    "`python -m goae.convert eg3d ffhqrebalanced512-128.pkl weights/generator` and "
    "`python -m goae.convert goae --eg3d ffhqrebalanced512-128.pkl --encoder encoder_FFHQ.pt --afa afa_FFHQ.pt weights/goae`."
)


def _is_offline() -> bool:
    # Read the environment at call time (huggingface_hub reads it once, at import).
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return env or bool(constants.HF_HUB_OFFLINE)


def _check_model_folder(folder: Path, source: str) -> Path:
    """A usable folder holds a pipeline (model_index.json) or a component (config.json + weights)."""
    if not folder.is_dir():
        raise WeightsNotFoundError(f"{source}: folder {folder} does not exist. " + HOW_TO_GET_WEIGHTS.format(repo="<repo_id>"))
    if (folder / "model_index.json").is_file():
        return folder
    has_config = (folder / "config.json").is_file()
    has_weights = any(folder.glob("*.safetensors")) or any(folder.glob("*.bin"))
    if has_config and has_weights:
        return folder
    missing = [name for name, ok in (("config.json", has_config), ("*.safetensors weights", has_weights)) if not ok]
    raise WeightsNotFoundError(
        f"{source}: folder {folder} is not a goae model folder (missing {' and '.join(missing)}; "
        f"expected model_index.json, or config.json + diffusion_pytorch_model.safetensors). "
        + HOW_TO_GET_WEIGHTS.format(repo="<repo_id>")
    )


def resolve_pretrained(repo_id_or_dir: str | os.PathLike, subfolder: str | None = None, revision: str | None = None) -> Path:
    """Local folder of a pipeline/component: a local directory is used as-is, anything else is a
    Hub repo id resolved with `huggingface_hub.snapshot_download` (only the cache when offline)."""
    local = Path(repo_id_or_dir).expanduser()
    if local.exists():
        if not local.is_dir():
            raise WeightsNotFoundError(f"{local} is a file; pass the model folder (or a Hub repo id)")
        return _check_model_folder(local / subfolder if subfolder else local, str(repo_id_or_dir))
    repo = str(repo_id_or_dir)
    if not _REPO_ID.match(repo):
        raise WeightsNotFoundError(f"{repo!r} is neither an existing folder nor a Hugging Face Hub repo id ('org/name')")

    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    offline = _is_offline()
    try:
        root = snapshot_download(
            repo,
            revision=revision,
            allow_patterns=[f"{subfolder}/*", "model_index.json"] if subfolder else None,
            local_files_only=offline,
        )
    except LocalEntryNotFoundError:
        why = "offline mode (HF_HUB_OFFLINE=1) is on" if offline else "the Hub cannot be reached (no network?)"
        raise WeightsNotFoundError(
            f"weights for {repo!r}{f' (revision {revision})' if revision else ''} are not in the local Hugging Face "
            f"cache and {why}. " + HOW_TO_GET_WEIGHTS.format(repo=repo)
        ) from None
    except (RepositoryNotFoundError, RevisionNotFoundError) as e:
        raise WeightsNotFoundError(f"{repo!r}: {type(e).__name__} on the Hugging Face Hub. " + HOW_TO_GET_WEIGHTS.format(repo=repo)) from None
    folder = Path(root) / subfolder if subfolder else Path(root)
    return _check_model_folder(folder, f"{repo}{f'/{subfolder}' if subfolder else ''}")
