"""`goae invert` never deletes what it did not write, refuses non-finite numbers, and lets one bad photo cost
only its own result (issue #15 items 1, 2, 7, 13). Unrelated files are created in --out and must survive."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from goae import cli
from test_export_bundle import fill, small_disk  # noqa: F401  (the real 2 MB tmpfs fixture)
from tiny import load_tiny_config, tiny_pipeline


@pytest.fixture(scope="module")
def weights_dir(parity_dir, tmp_path_factory) -> Path:
    gdir = parity_dir / "goae"
    out = tmp_path_factory.mktemp("weights") / "tiny-goae"
    tiny_pipeline(load_tiny_config(gdir), gdir).save_pretrained(out)
    return out


def _unrelated(out: Path) -> dict[str, str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes.txt").write_text("not goae's")
    (out / "other").mkdir()
    (out / "other" / "keep.txt").write_text("not goae's either")
    return {"notes.txt": "not goae's", "other/keep.txt": "not goae's either"}


def _survived(out: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        assert (out / name).read_text() == text, name


def _hashed(base: str, path: Path) -> str:
    """The folder name of an input whose plain name another input holds: base-<8 hex of its resolved path>."""
    import hashlib
    return f"{base}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"


def _lines(err: str, photo: str) -> list[str]:
    return [line for line in err.splitlines() if f"{photo}: " in line]


def test_dangerous_and_duplicate_names(landmarker, weights_dir, examples_dir, tmp_path, capsys):
    """#15.1: a photo named `..jpg` with --overwrite replaced the whole --out folder and exited 0.
    #15.2: `face.jpg` and `face.png` wrote one folder (the second failed, or replaced the first)."""
    photos = tmp_path / "in"
    photos.mkdir()
    for name, src in (("..jpg", "obama.jpg"), ("face.jpg", "obama.jpg"), ("face.png", "astronaut.png"),
                      ("other.jpg", "obama.jpg")):
        shutil.copy(examples_dir / "wild" / src, photos / name)
    out = tmp_path / "out"
    keep = _unrelated(out)

    code = cli.main(["invert", str(photos / "..jpg"), str(photos / "face.jpg"), str(photos / "face.png"),
                     "--out", str(out), "--weights", str(weights_dir), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 0, err
    _survived(out, keep)
    face2 = _hashed("face", photos / "face.png")
    assert sorted(p.name for p in out.iterdir()) == ["face", face2, "manifest.jsonl", "notes.txt", "other", "photo"]
    for folder, photo in (("photo", "..jpg"), ("face", "face.jpg"), (face2, "face.png")):
        assert json.loads((out / folder / "result.json").read_text())["photo"] == str(photos / photo)

    # Again with --overwrite: earlier results are replaced; a folder goae did not write is not.
    code = cli.main(["invert", str(photos / "other.jpg"), str(photos / "..jpg"), "--out", str(out),
                     "--weights", str(weights_dir), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1
    assert "not a goae result folder" in _lines(err, "other.jpg")[0]
    assert "ok ->" in _lines(err, "..jpg")[0] and "Traceback" not in err
    _survived(out, keep)
    assert sorted(p.name for p in out.iterdir()) == ["face", face2, "manifest.jsonl", "notes.txt", "other", "photo"]


@pytest.mark.parametrize("option", [
    "--views=nan:0", "--views=0:inf", "--views=1e400:0", "--views=-inf", "--fps=nan", "--fps=inf", "--fps=0",
    "--frames=nan", "--frames=2.5", "--mesh-level=nan", "--mesh-level=-inf", "--mesh-resolution=inf",
    "--edit=age=nan", "--edit=age=inf", "--face-index=nan", "--seed=inf",
])
def test_non_finite_numbers_are_refused(option, tmp_path, capsys):
    """#15.7: `--views=nan:0` wrote a black image and exited 0."""
    with pytest.raises(SystemExit) as e:
        cli.main(["invert", "a.jpg", "--out", str(tmp_path / "o"), option])
    err = capsys.readouterr().err
    assert e.value.code == 2 and ("finite" in err or "whole number" in err or "between" in err), err
    assert not (tmp_path / "o").exists()


def test_nan_weights_are_one_clear_line(parity_dir, examples_dir, tmp_path, capsys):
    """#15.13: NaN weights failed deep in the renderer (RuntimeError), outside the caught types."""
    gdir = parity_dir / "goae"
    pipe = tiny_pipeline(load_tiny_config(gdir), gdir)
    with torch.no_grad():
        next(pipe.encoder.parameters()).fill_(float("nan"))
    pipe.save_pretrained(tmp_path / "nan-weights")
    code = cli.main(["invert", str(examples_dir / "wild" / "obama.jpg"), "--out", str(tmp_path / "o"),
                     "--weights", str(tmp_path / "nan-weights")])
    err = capsys.readouterr().err
    line = [x for x in err.splitlines() if "goae: error:" in x]
    # the loader (goae.weights.checks) or check_weights names the damaged component, whichever notices first
    assert code == 2 and len(line) == 1 and "nan or inf" in line[0].lower() and "encoder" in line[0], err
    assert "Traceback" not in err


def test_unexpected_error_costs_one_photo(landmarker, weights_dir, examples_dir, tmp_path, capsys, monkeypatch):
    """#15.13: an exception type nobody expected ends neither the batch nor prints a traceback."""
    import goae.align

    real = goae.align.align_face

    def flaky(photo, **kw):
        if Path(photo).name == "obama.jpg":
            raise RuntimeError("something deep\nbroke")
        return real(photo, **kw)

    monkeypatch.setattr(goae.align, "align_face", flaky)
    out = tmp_path / "out"
    code = cli.main(["invert", str(examples_dir / "wild" / "obama.jpg"), str(examples_dir / "wild" / "astronaut.png"),
                     "--out", str(out), "--weights", str(weights_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert _lines(err, "obama.jpg") == [f"{examples_dir / 'wild' / 'obama.jpg'}: error: RuntimeError: something deep broke"]
    assert "ok ->" in _lines(err, "astronaut.png")[0]
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "manifest.jsonl"]


def test_full_disk_costs_each_photo_its_own_result(landmarker, small_disk, weights_dir, examples_dir,  # noqa: F811
                                                   capsys):
    """#15.13: disk full while writing a result. A real 2 MB tmpfs with 400 kB left: obama's aligned crop
    (374 kB) fits, the rest of its folder (~480 kB in all) does not. The photo gets one line naming its
    folder, nothing half-written stays, nothing else goes, and the next photo still gets its own turn."""
    keep = _unrelated(small_disk)
    fill(small_disk, leave=400_000)
    photos = [examples_dir / "wild" / "obama.jpg", examples_dir / "wild" / "astronaut.png"]
    code = cli.main(["invert", *map(str, photos), "--out", str(small_disk), "--weights", str(weights_dir)])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err, err
    assert _lines(err, "obama.jpg") == [f"{photos[0]}: error: No space left on device: {small_disk / 'obama'}"], err
    second = _lines(err, "astronaut.png")  # its own result: written if it fits, else its own line
    assert len(second) == 1 and ("ok ->" in second[0] or "No space left on device" in second[0]), err
    _survived(small_disk, keep)
    written = sorted(p.name for p in small_disk.iterdir() if p.name != "manifest.jsonl")  # written if it fits
    assert written in (["filler", "notes.txt", "other"], ["astronaut", "filler", "notes.txt", "other"])  # no temp


# ------------------------------------------------------------------------------------ issue #29 (CLI parts)
def test_names_are_stable_per_input(landmarker, weights_dir, examples_dir, tmp_path, capsys):
    """#29.5: names depended on list position: an input added in front took `face` ("already exists") and the
    old one was inverted again into `face-2`; with --overwrite another photo's result replaced it.
    #29.9: a photo named manifest.jsonl.jpg took the manifest's name."""
    photos = tmp_path / "in"
    for rel, src in (("x/face.jpg", "obama.jpg"), ("a/face.jpg", "astronaut.png"),
                     ("manifest.jsonl.jpg", "astronaut.png")):
        (photos / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(examples_dir / "wild" / src, photos / rel)
    out = tmp_path / "out"
    x, a, m = photos / "x" / "face.jpg", photos / "a" / "face.jpg", photos / "manifest.jsonl.jpg"
    assert cli.main(["invert", str(x), "--out", str(out), "--weights", str(weights_dir)]) == 0
    stamp = (out / "face" / "result.json").stat().st_mtime_ns

    # a/face.jpg comes first and sorts first; x/face.jpg keeps `face`, which holds its result
    code = cli.main(["invert", str(a), str(x), str(m), "--out", str(out), "--weights", str(weights_dir),
                     "--resume", "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0, summary
    got = [(Path(r["input"]).name, r["status"], Path(r["output"]).name) for r in summary["results"]]
    assert got == [("face.jpg", "ok", _hashed("face", a)), ("face.jpg", "skipped", "face"),
                   ("manifest.jsonl.jpg", "ok", _hashed("manifest.jsonl", m))]
    assert (out / "face" / "result.json").stat().st_mtime_ns == stamp
    assert (out / "manifest.jsonl").is_file() and len((out / "manifest.jsonl").read_text().splitlines()) == 3

    # --overwrite with the inputs in another order: every result stays its own photo's
    assert cli.main(["invert", str(m), str(x), str(a), "--out", str(out), "--weights", str(weights_dir),
                     "--overwrite"]) == 0
    for folder, photo in (("face", x), (_hashed("face", a), a), (_hashed("manifest.jsonl", m), m)):
        assert json.loads((out / folder / "result.json").read_text())["photo"] == str(photo)


def test_input_folder_names(tmp_path):
    """Names from the path under the given folder or glob root; deduplicated by path, whatever the order."""
    tree = tmp_path / "shots"
    for rel in ("a/1.jpg", "b/1.jpg", "1.png", "c/d/2.jpg", "A/1.jpg"):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(b"")
    out = tmp_path / "out"

    def names(args):
        items = cli.expand_inputs(args, out)
        cli.input_folders(items, out)
        return {it.path.relative_to(tmp_path).as_posix(): it.folder.name for it in items}

    first = names([str(tree)])
    assert first["shots/b/1.jpg"] == "b-1" and first["shots/1.png"] == "1" and first["shots/c/d/2.jpg"] == "c-d-2"
    # 'A-1' and 'a-1' are one name on a case-insensitive disk: the first by path keeps it, the other is hashed
    assert {first["shots/A/1.jpg"], first["shots/a/1.jpg"]} == {"A-1", _hashed("a-1", tree / "a" / "1.jpg")}
    assert names([str(tree / "c"), str(tree)]) == {**first, "shots/c/d/2.jpg": "d-2"}   # c given first: its root
    assert names([str(tree / "**" / "*.jpg")]) == {k: v for k, v in first.items() if k.endswith(".jpg")}


def test_control_characters_in_names_are_escaped(landmarker, weights_dir, examples_dir, tmp_path, capsys):
    """#29.9: a newline in a file name was printed raw and forged an "ok ->" line."""
    evil = tmp_path / "in" / "x.jpg: ok -> somewhere\nFORGED \x1b[2K.png"
    evil.parent.mkdir()
    shutil.copy(examples_dir / "wild" / "coffee.png", evil)      # no face: its error line names it
    code = cli.main(["invert", str(evil), "--out", str(tmp_path / "out"), "--weights", str(weights_dir)])
    err = capsys.readouterr().err
    assert code == 1
    assert not any(line.startswith("FORGED") for line in err.splitlines()) and "\x1b" not in err, err
    assert "\\nFORGED \\x1b[2K.png: error: No face found" in err, err


def test_only_regular_files_are_read(landmarker, weights_dir, examples_dir, tmp_path, capsys):
    """#29.2: a FIFO named x.mp4 in a folder hung the whole batch; nothing after it ran, no manifest."""
    import os
    from test_video import _returns_within, _unblock

    folder = tmp_path / "in"
    folder.mkdir()
    os.mkfifo(folder / "x.mp4")
    os.mkfifo(folder / "y.jpg")
    fifo = tmp_path / "given.mov"
    os.mkfifo(fifo)
    shutil.copy(examples_dir / "wild" / "coffee.png", folder / "z.png")
    out = tmp_path / "out"
    try:
        done, e = _returns_within(lambda: cli.main(["invert", str(folder), str(fifo), "--out", str(out),
                                                    "--weights", str(weights_dir)]))
        assert done and e is None, e
    finally:
        for f in (folder / "x.mp4", folder / "y.jpg", fifo):
            _unblock(f)
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(Path(r["input"]).name, r["status"]) for r in records] == [("z.png", "failed"), ("given.mov", "failed")]
    assert "No face" in records[0]["error"] and "FIFO" in records[1]["error"]


def test_one_run_per_out_folder_and_stale_partials(landmarker, weights_dir, examples_dir, tmp_path, capsys):
    """#29.9: two runs on one --out: the second reported every input failed while the first completed them.
    Now the second is refused (exit 2) and touches nothing; partial `.<name>.tmp-*` entries are removed only
    by the run that holds the lock."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.jsonl").write_text("the first run's\n")
    stale = [out / ".face.tmp-ab12cd_3", out / ".manifest.jsonl.tmp-zz9_xx11.jsonl",
             out / ".clip.goae-frames" / ".frame_000001.npz.tmp-abcdefgh.npz"]
    stale[0].mkdir()
    (stale[0] / "aligned.png").write_bytes(b"partial")
    for f in stale[1:]:
        f.parent.mkdir(exist_ok=True)
        f.write_bytes(b"partial")
    kept = [out / ".face.tmp-short", out / ".hidden", out / ".clip.goae-frames" / "frame_000001.npz"]
    for f in kept:
        f.write_bytes(b"not a goae temporary")
    photo = str(examples_dir / "wild" / "coffee.png")

    holder = cli.OutputLock(out)
    assert holder.acquire()
    try:
        code = cli.main(["invert", photo, "--out", str(out), "--weights", str(weights_dir)])
        err = capsys.readouterr().err
        assert code == 2 and "another goae run (pid" in err and "is writing to" in err, err
        assert (out / "manifest.jsonl").read_text() == "the first run's\n"
        assert all(os.path.lexists(f) for f in stale + kept)
    finally:
        holder.release()

    assert cli.main(["invert", photo, "--out", str(out), "--weights", str(weights_dir)]) == 1   # no face
    err = capsys.readouterr().err
    assert "removed 3 partial result(s)" in err, err
    assert not any(os.path.lexists(f) for f in stale) and all(f.is_file() for f in kept)
    assert not (out / cli.LOCK_FILE).exists()      # released
    assert "coffee.png" in (out / "manifest.jsonl").read_text()


@pytest.mark.slow
def test_a_killed_run_leaves_nothing_that_blocks_the_next(landmarker, weights_dir, examples_dir, tmp_path, capsys):
    """#29.9: SIGKILL mid-write left `.<name>.tmp-*` for ever. The killed run's lock file stays but holds no lock
    (the kernel drops flock with the process): the next run starts, removes the partial folder and completes."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    photo = examples_dir / "wild" / "obama.jpg"
    args = ["invert", str(photo), "--out", str(out), "--weights", str(weights_dir), "--video", "--frames", "200"]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "goae", *args], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not list(out.glob(".obama.tmp-*/aligned.png")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed mid-write"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert list(out.glob(".obama.tmp-*")) and (out / cli.LOCK_FILE).exists()

    assert cli.main(args[:-2] + ["--frames", "2"]) == 0
    err = capsys.readouterr().err
    assert "removed 1 partial result(s) left by a killed run: .obama.tmp-" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["manifest.jsonl", "obama"]
