"""Nothing in a checkpoint file is trusted to be small: the guards every reader passes first.

A few bytes of pickle or zip can describe gigabytes (memo indices, shared sub-objects expanded by a walk,
compressed storages, views that declare more bytes than their storage). Before anything is built we check the
file is a regular file, walk the pickle's opcodes (`scan_pickle`), bound every walk over the record tree
(`Walk`), refuse compressed zip entries and tensors that declare more bytes than the file holds.
"""

from __future__ import annotations

import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any, Mapping

import torch

from goae.io import NotARegularFile, check_regular_file, one_line
from goae.weights.checks import preview, short
from goae.weights.errors import (CheckpointError, CheckpointNotFoundError, OversizedCheckpointError,
                                 TruncatedCheckpointError, WrongCheckpointError)

ZIP_MAGIC = b"PK\x03\x04"
TORCH_LEGACY_MAGIC = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]  # a legacy torch.save file's start



def first_line(e: BaseException) -> str:
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    for s in lines:  # torch's weights_only message names the global on such a line
        if "Unsupported global" in s or "GLOBAL" in s:
            return s
    return lines[0] if lines else type(e).__name__


def checkpoint_size(path: Path) -> int:
    """Refuse what is not a regular file before opening it (a FIFO blocks forever, /dev/zero never
    ends); links to files are fine. Returns the size in bytes."""
    try:
        return check_regular_file(path, "checkpoint").stat().st_size
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such file") from None
    except NotARegularFile as e:
        raise WrongCheckpointError(str(e)) from None
    except OSError as e:
        raise WrongCheckpointError(f"{path}: cannot read it ({one_line(e)})") from None


# Limits on what a network pickle may describe. A released EG3D pickle is far below them: G_ema has
# ~80 modules 5 levels deep and ~100 kwargs values; the tiny test pickle (G, D) is 24k opcodes.
MAX_PICKLE_OPS = 2_000_000
MAX_DEPTH = 32
MAX_KWARGS_NODES = 10_000
MAX_MODULES = 20_000
_MEMO_PUTS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _Bounded:
    """A file view whose read(n) never asks for more than is left: pickletools would otherwise
    request a declared length (up to 2**64) from the file in one call."""

    def __init__(self, f, size: int):
        self.f, self.size = f, size

    def read(self, n: int = -1) -> bytes:
        left = self.size - self.f.tell()
        return self.f.read(left if n < 0 else min(n, left))

    def readline(self) -> bytes:
        return self.f.readline()

    def tell(self) -> int:
        return self.f.tell()


def scan_pickle(path: Path, size: int) -> None:
    """Walk the opcodes without building anything, before the real unpickler runs: a truncated file
    never reaches STOP, and some opcodes make CPython's C unpickler allocate far beyond the file
    (a memo index of 2**29 in a 9-byte pickle fills an 8 GB table). A real pickler numbers memo
    entries 0, 1, 2, ..., so an index above the opcode count is refused."""
    with open(path, "rb") as f:
        try:
            for n_ops, (op, arg, pos) in enumerate(pickletools.genops(_Bounded(f, size)), 1):
                if n_ops > MAX_PICKLE_OPS:
                    raise OversizedCheckpointError(f"{path} has more than {MAX_PICKLE_OPS:,} pickle opcodes "
                                                   f"(an EG3D network pickle has tens of thousands)")
                if op.name in _MEMO_PUTS and arg >= n_ops:
                    raise OversizedCheckpointError(f"{path}: pickle memo index {arg} at opcode {n_ops} is one no pickler "
                                                   f"writes (the unpickler would allocate {16 * arg:,} bytes for it)")
                if op.name == "FRAME" and arg > size - pos:  # the C unpickler would read(arg) at once
                    break
                if op.name == "STOP":
                    return
        except CheckpointError:
            raise
        except Exception as e:  # pickletools: unknown opcode vs. data that ends early
            if "unknown" in str(e):
                raise WrongCheckpointError(f"{path} is not a readable network pickle ({first_line(e)})") from None
    raise TruncatedCheckpointError(f"{path} is truncated (the pickle ends early); re-download it")


def check_zip(file: Any, size: int, what: str) -> None:
    """torch.save writes every zip entry uncompressed. A compressed entry is how a 2 MB file expands
    to GBs inside torch.load (a zip bomb), so refuse it, and require the entries to fit in the file."""
    try:
        with zipfile.ZipFile(file) as z:
            infos = z.infolist()
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise WrongCheckpointError(f"{what} is not a readable zip archive ({first_line(e)})") from None
    packed = [i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise OversizedCheckpointError(f"{what} has compressed entries ({preview(packed, 3)}); torch.save never "
                                       f"compresses, and a compressed tensor can expand to gigabytes (a zip bomb?)")
    total = sum(i.file_size for i in infos)
    if total > size:
        raise OversizedCheckpointError(f"{what}: its zip entries declare {total:,} bytes, more than the {size:,}-byte file holds")


def check_declared_bytes(sd: Mapping[str, torch.Tensor], size: int, what: str) -> None:
    # Every tensor of a real checkpoint is stored in the file. A view can declare any size over a
    # tiny storage (stride 0); anything that later copies it would allocate the declared size.
    declared = sum(t.numel() * t.element_size() for t in sd.values())
    if declared > size:
        raise OversizedCheckpointError(f"{what}: its tensors declare {declared:,} bytes, more than the {size:,}-byte "
                                       f"file holds (views of a tiny storage?)")




class Walk:
    """Bounds a walk over the record tree. A pickle can reference one object from many places, so
    a 1 KB file can describe a tree of 2**30 nodes; shared objects are walked (and counted) once
    per reference, which bounds the expanded size, and too deep a walk is a cycle or a bomb."""

    def __init__(self, what: str, max_nodes: int, max_depth: int = MAX_DEPTH):
        self.what, self.max_nodes, self.max_depth, self.nodes = what, max_nodes, max_depth, 0

    def step(self, depth: int) -> None:
        self.nodes += 1
        if self.nodes > self.max_nodes:
            raise OversizedCheckpointError(f"{self.what} has more than {self.max_nodes:,} entries, counting shared "
                                           f"sub-objects once per reference (an EG3D pickle has a few hundred)")
        if depth > self.max_depth:
            raise OversizedCheckpointError(f"{self.what} is nested more than {self.max_depth} levels deep (or has a cycle)")

