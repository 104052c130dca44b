"""goae.export.bundle: safe unique output names, checked options, the atomic "save an inversion" folder."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import subprocess
import types
from pathlib import Path

import pytest
import torch
from PIL import Image

from goae.camera import CameraError, camera_label_degrees
from goae.edit import DirectionError, save_direction
from goae.export import (ExportError, ExportOptions, check_weights, edit_file_name, output_folder, output_name,
                         safe_name, save_inversion, save_latent)
from tiny import load_tiny_config, tiny_pipeline


# ----------------------------------------------------------------------------------------- names
def test_output_names_stay_inside_and_are_unique(tmp_path):
    taken: set[str] = set()
    names = [output_name(p, taken) for p in
             ["..jpg", ".jpg", "...", "face.avif", "face.webp", "FACE.png", "dir/../x.jpg", " .png", "a\nb\x00c.jpg",
              "noext", "café.jpg", "x" * 300 + ".jpg", "photo.jpg"]]
    assert names[:3] == ["photo", "jpg", "photo-2"]
    assert names[3:6] == ["face", "face-2", "FACE-3"]        # one stem, one folder each (case-insensitive)
    assert names[6:11] == ["x", "photo-3", "a_b_c", "noext", "café"]
    assert len(names[11].encode()) <= 100 and names[12] == "photo-4"
    assert len({n.casefold() for n in names}) == len(names)
    for n in names:
        assert n not in ("", ".", "..") and not n.startswith(".") and "/" not in n and "\\" not in n
    for p in ("..jpg", "../../etc/passwd", ".", "/"):
        folder = output_folder(tmp_path, p, taken)
        assert folder.parent == tmp_path and folder != tmp_path and folder.resolve().parent == tmp_path.resolve()
    assert safe_name("..") == "photo" and safe_name("a/b") == "a_b"


def test_file_names():
    assert edit_file_name({"age": 2.0, "glass": -1.0}) == "edit_age+2_glass-1.png"
    assert edit_file_name({"age": 0.0}) == "edit_none.png"
    assert edit_file_name({"../x": 1.0}).startswith("edit_") and "/" not in edit_file_name({"../x": 1.0})


# ----------------------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("kwargs", [
    dict(views=[(float("nan"), 0)]), dict(views=[(0, float("inf"))]), dict(fps=float("nan")), dict(fps=float("inf")),
    dict(fps=0), dict(video_frames=float("nan")), dict(video_frames=2.5), dict(video_frames=True),
    dict(mesh_resolution=float("inf")), dict(mesh_resolution=1), dict(mesh_level=float("nan")),
    dict(mesh_level="dense"), dict(edits={"age": float("nan")}), dict(edits={"age": float("-inf")}),
])
def test_export_options_refuse_non_finite_numbers(kwargs):
    with pytest.raises(ExportError):
        ExportOptions(**kwargs)


def test_export_options_normalise():
    o = ExportOptions(views=[(-0.0, 0), (0, 0), ("30", "5")], video_frames=3.0, mesh_level="12")
    assert o.views == ((0.0, 0.0), (30.0, 5.0)) and o.video_frames == 3 and o.mesh_level == 12.0


def test_degree_cameras_refuse_non_finite():
    assert camera_label_degrees(30, -5).shape == (1, 25)
    for yaw, pitch in ((float("nan"), 0), (0, float("inf"))):
        with pytest.raises(CameraError, match="finite"):
            camera_label_degrees(yaw, pitch)


# ----------------------------------------------------------------------------------------- disk full
@pytest.fixture
def small_disk(tmp_path):
    """A real 2 MB tmpfs (needs root / CAP_SYS_ADMIN; skipped with the reason otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 2 MB tmpfs to test a full disk (needs root): {r.stderr.strip() or r.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 0) -> None:
    """Fill `disk` so that about `leave` bytes stay free (all of it with leave=0)."""
    st = os.statvfs(disk)
    with open(disk / "filler", "wb") as f:
        try:
            f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
            f.flush()
        except OSError:
            pass


def test_latent_on_a_full_disk_is_an_oserror(small_disk):
    """safetensors' own writer raised SafetensorError (no OSError) on a full disk, which ended CLI batches."""
    (small_disk / "notes.txt").write_text("keep me")
    fill(small_disk)
    big = types.SimpleNamespace(ws=torch.zeros(1, 14, 100_000), camera=torch.zeros(1, 25))  # > the whole disk
    with pytest.raises(OSError) as e:
        save_latent(small_disk / "ws.safetensors", big)
    assert e.value.errno == errno.ENOSPC
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "notes.txt"]  # no temp file left


# ----------------------------------------------------------------------------------------- save_inversion
@pytest.fixture(scope="module")
def tiny(parity_dir, examples_dir, tmp_path_factory):
    gdir = parity_dir / "goae"
    pipe = tiny_pipeline(load_tiny_config(gdir), gdir)
    pipe.generator.neural_rendering_resolution = 32
    photos = examples_dir / "goae" / "real_person"
    labels = dict(json.loads((photos / "label.json").read_text())["labels"])
    face = types.SimpleNamespace(image=Image.open(photos / "1.jpg").convert("RGB"), camera=labels["1.jpg"],
                                 face_index=0, faces=[None], box=(0.0, 0.0, 512.0, 512.0))
    dirs = tmp_path_factory.mktemp("dirs")
    for name in ("age", "glass"):
        save_direction(dirs / f"{name}.safetensors", torch.randn(1, 14, 32, generator=torch.Generator().manual_seed(1)))
    from goae.edit import directions_for
    return pipe, face, directions_for(pipe, dirs)[0], pipe(face.image, face.camera)


def test_save_inversion_folder(tiny, tmp_path):
    pipe, face, directions, result = tiny
    options = ExportOptions(views=[(-20, 0), (20, 5)], video_frames=2, fps=10, mesh_resolution=24,
                            edits={"glasses": 1.0, "age": 2})
    folder = save_inversion(pipe, face, tmp_path / "one", options, directions=directions, result=result, source="1.jpg")
    meta = json.loads((folder / "result.json").read_text())
    listed = [f for v in meta["files"].values() for f in (v if isinstance(v, list) else [v])]
    assert sorted(p.name for p in folder.iterdir()) == sorted(listed + ["result.json"])
    assert meta["edits"] == {"glass": 1.0, "age": 2.0} and meta["files"]["edit"] == "edit_glass+1_age+2.png"
    assert meta["files"]["views"] == ["view_yaw-20_pitch+0.png", "view_yaw+20_pitch+5.png"]
    assert meta["photo"] == "1.jpg" and len(meta["camera"]) == 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]  # no temporary folder left

    with pytest.raises(FileExistsError, match="already exists"):
        save_inversion(pipe, face, folder, result=result)
    save_inversion(pipe, face, folder, result=result, overwrite=True)  # an earlier result is replaced
    assert "video" not in json.loads((folder / "result.json").read_text())["files"]


def test_overwrite_never_replaces_unrelated_folders(tiny, tmp_path):
    pipe, face, _, result = tiny
    mine = tmp_path / "Documents"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(FileExistsError, match="not a goae result folder"):
        save_inversion(pipe, face, mine, result=result, overwrite=True)
    assert (mine / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Documents"]


def test_damaged_results_and_weights_are_refused(tiny, tmp_path):
    pipe, face, directions, result = tiny
    bad = dataclasses.replace(result, image=result.image * float("nan"))
    with pytest.raises(ExportError, match="NaN"):
        save_inversion(pipe, face, tmp_path / "nan", result=bad)
    with pytest.raises(DirectionError, match="unknown edit"):
        save_inversion(pipe, face, tmp_path / "e", ExportOptions(edits={"smile": 1}), directions=directions, result=result)
    assert list(tmp_path.iterdir()) == []
    check_weights(pipe)
    w = pipe.afa.state_dict()
    name = next(k for k, v in w.items() if v.is_floating_point())
    saved = w[name].clone()
    try:
        w[name].view(-1)[0] = float("inf")
        with pytest.raises(ExportError, match=f"afa.{name}"):
            check_weights(pipe)
    finally:
        w[name].copy_(saved)
