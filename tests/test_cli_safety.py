"""`goae invert` never deletes what it did not write, refuses non-finite numbers, and lets one bad photo cost
only its own result (issue #15 items 1, 2, 7, 13). Unrelated files are created in --out and must survive."""
from __future__ import annotations

import json
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
    assert sorted(p.name for p in out.iterdir()) == ["face", "face-2", "manifest.jsonl", "notes.txt", "other", "photo"]
    for folder, photo in (("photo", "..jpg"), ("face", "face.jpg"), ("face-2", "face.png")):
        assert json.loads((out / folder / "result.json").read_text())["photo"] == str(photos / photo)

    # Again with --overwrite: earlier results are replaced; a folder goae did not write is not.
    code = cli.main(["invert", str(photos / "other.jpg"), str(photos / "..jpg"), "--out", str(out),
                     "--weights", str(weights_dir), "--overwrite"])
    err = capsys.readouterr().err
    assert code == 1
    assert "not a goae result folder" in _lines(err, "other.jpg")[0]
    assert "ok ->" in _lines(err, "..jpg")[0] and "Traceback" not in err
    _survived(out, keep)
    assert sorted(p.name for p in out.iterdir()) == ["face", "face-2", "manifest.jsonl", "notes.txt", "other", "photo"]


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
    # the loader (goae.hub) or check_weights names the damaged component, whichever notices first
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
