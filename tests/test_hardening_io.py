"""Issue #15, output side: what goae writes gets the user's normal permissions (safetensors files were
0600 because safetensors writes through its own private temporary file), and an output folder that is
a symbolic link is refused instead of being replaced."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from goae.io import atomic_dir, atomic_path, check_output_dir

ROOT = Path(__file__).resolve().parents[1]

_MODES = """
import json, os, sys
from pathlib import Path
import numpy as np
from safetensors.numpy import save_file
from goae.io import _umask, atomic_dir, atomic_path, atomic_write_bytes

root, out = Path(sys.argv[1]), {}
for mask in (0o022, 0o077, 0o002):
    os.umask(mask)
    assert _umask() == mask and _umask() == mask  # reading it leaves it unchanged
    d = root / oct(mask)
    with atomic_path(d / "x.safetensors") as tmp:
        save_file({"a": np.zeros(2, np.float32)}, str(tmp))
    atomic_write_bytes(d / "x.bin", b"abc")
    with atomic_dir(d / "folder") as tmp:
        save_file({"a": np.zeros(2, np.float32)}, str(tmp / "w.safetensors"))
        (tmp / "sub").mkdir()
        (tmp / "sub" / "c.json").write_text("{}")
    out[oct(mask)] = {str(p.relative_to(d)): oct(p.stat().st_mode & 0o777) for p in [*d.rglob("*")]}
print(json.dumps(out))
"""


def test_written_modes_follow_the_umask(tmp_path):
    r = subprocess.run([sys.executable, "-c", _MODES, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    for mask, modes in json.loads(r.stdout).items():
        mask = int(mask, 8)
        assert set(modes) == {"x.safetensors", "x.bin", "folder", "folder/w.safetensors", "folder/sub", "folder/sub/c.json"}
        for name, mode in modes.items():
            want = (0o777 if name in ("folder", "folder/sub") else 0o666) & ~mask
            assert int(mode, 8) == want, (oct(mask), name, mode)


def test_links_inside_the_folder_are_not_followed(tmp_path):
    outside = tmp_path / "secret"
    outside.write_text("x")
    os.chmod(outside, 0o600)
    with atomic_dir(tmp_path / "out") as tmp:
        os.symlink(outside, tmp / "link")
    assert (tmp_path / "out" / "link").is_symlink() and outside.stat().st_mode & 0o777 == 0o600


def test_symlink_output_folder_is_refused(tmp_path):
    target = tmp_path / "target"
    link = tmp_path / "link"
    os.symlink(target, link)  # dangling
    for overwrite in (False, True):
        with pytest.raises(FileExistsError, match="symbolic link"):
            check_output_dir(link, overwrite)
        with pytest.raises(FileExistsError, match="symbolic link"):
            with atomic_dir(link, overwrite=overwrite):
                pass
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(FileExistsError, match="symbolic link"):
        with atomic_dir(link, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    assert link.is_symlink() and sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "target"]


def test_atomic_path_mode_after_writer_replaced_the_file(tmp_path):
    # A writer that writes elsewhere and renames over the temporary (as safetensors does) leaves 0600.
    mask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            other = tmp_path / "private"
            other.write_text("data")
            os.chmod(other, 0o600)
            os.replace(other, tmp)
        assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(mask)
