"""Weights: where they are, where they come from, whether to trust them, and how official files become goae's.

  errors.py       every error about weights (not found, a bad folder, a bad checkpoint, a failed download)
  resolve.py      a local folder or a Hugging Face Hub repo -> a folder (goae.paths: the cache root)
  checks.py       a folder checked before anything is built (bounds, safetensors headers); NaN/Inf refused
  guards.py       a checkpoint file checked before it is read (regular file, pickle opcodes, zip entries, sizes)
  unpickle.py     official files read as data: the safe unpickler (EG3D .pkl), torch's weights_only (GOAE .pt)
  checkpoints.py  official checkpoints -> goae models, keys and shapes checked (and the GOAE key mapping)
  convert.py      official checkpoints -> goae folders with a model card (`goae convert`)
  cards.py        the model card (README.md) of every folder goae writes: licence, provenance, usage
  fetch.py        the HTTP client (resume, deadlines, redirects, a full disk)
  sources.py      NGC, Google Drive, the GOAE repository, a mirror; the licences
  download.py     `goae download`: licences, fetch, check, convert, the edit directions

The pipeline imports resolve, checks and cards; it never imports the downloader. The face landmarker model the
aligner uses is fetched by goae.landmarker, into the same cache root.
"""
