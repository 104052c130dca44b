"""`goae invert` over datasets (issue #17 item 2): folders and globs, --resume, the merged manifest, and torchrun
with 2 gloo processes on a CPU writing the same files as one process. Small random model, real photos."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from goae import cli
from test_cli_safety import _hashed

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""), **extra)
    return env


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_folders_globs_json_and_resume(landmarker, examples_dir, tmp_path, capsys):
    wild, real = examples_dir / "wild", examples_dir / "goae" / "real_person"
    tree = tmp_path / "in"
    for rel, src in (("a/face.jpg", wild / "obama.jpg"), ("b/face.jpg", real / "1.jpg"),
                     ("b/.hidden.jpg", real / "2.jpg"), ("glob/astronaut.png", wild / "astronaut.png"),
                     ("glob/coffee.png", wild / "coffee.png")):
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, tree / rel)
    (tree / "b" / "readme.txt").write_text("not a photo")
    out = tree / "results"          # inside the input folder: never read back as input
    args = ["invert", str(tree / "a"), str(tree / "b"), str(tree / "glob" / "*.png"), str(tmp_path / "none" / "*.jpg"),
            "--out", str(out), "--weights", "random-small", "--json"]

    r = subprocess.run([sys.executable, "-m", "goae", *args], capture_output=True, text=True, cwd=ROOT, env=_env())
    assert r.returncode == 1, r.stderr
    summary = json.loads(r.stdout)                  # stdout holds the JSON and nothing else
    for noise in ("W0000", "XNNPACK", "InitGoogle"):  # mediapipe's native log lines are gone by default
        assert noise not in r.stderr, r.stderr
    assert (summary["inputs"], summary["succeeded"], summary["failed"], summary["skipped"]) == (5, 3, 2, 0)
    got = [(Path(x["input"]).relative_to(tmp_path).as_posix(), x["status"],
            x["output"] and Path(x["output"]).name) for x in summary["results"]]
    face2 = _hashed("face", tree / "b" / "face.jpg")      # one name, two inputs: the second by path is hashed
    assert got == [("in/a/face.jpg", "ok", "face"), ("in/b/face.jpg", "ok", face2),
                   ("in/glob/astronaut.png", "ok", "astronaut"), ("in/glob/coffee.png", "failed", "coffee"),
                   ("none/*.jpg", "failed", None)]
    assert "No face found" in summary["results"][3]["error"] and "no files match" in summary["results"][4]["error"]
    assert _records(out) == summary["results"]
    assert sorted(p.name for p in out.iterdir()) == ["astronaut", "face", face2, "manifest.jsonl"]
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}

    assert cli.main(args + ["--resume"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert [x["status"] for x in summary["results"]] == ["skipped", "skipped", "skipped", "failed", "failed"]
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")} == stamps   # nothing redone
    # a folder whose result.json names another photo is not this one's: it gets its own name, and the other
    # photo's result stays (even with --overwrite)
    meta = json.loads((out / "face" / "result.json").read_text())
    meta["photo"] = str(tree / "elsewhere.jpg")
    (out / "face" / "result.json").write_text(json.dumps(meta))
    assert cli.main(args + ["--resume", "--overwrite"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert [x["status"] for x in summary["results"]][:3] == ["ok", "skipped", "skipped"]
    assert Path(summary["results"][0]["output"]).name == _hashed("face", tree / "a" / "face.jpg")
    assert json.loads((out / "face" / "result.json").read_text())["photo"] == str(tree / "elsewhere.jpg")


def test_two_torchrun_processes_write_what_one_writes(landmarker, examples_dir, tmp_path):
    """Each process takes every 2nd input; the files are byte-identical to one process's (same thread count),
    result.json identical but for the timing, and one manifest lists every input in input order."""
    data = tmp_path / "data"
    data.mkdir()
    for name in ("1.jpg", "2.jpg", "4.jpg"):
        shutil.copy(examples_dir / "goae" / "real_person" / name, data / name)
    shutil.copy(examples_dir / "wild" / "coffee.png", data / "coffee.png")
    common = ["invert", str(data), "--weights", "random-small", "--json"]

    one = subprocess.run([sys.executable, "-m", "goae", *common, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, cwd=ROOT, env=_env())
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "goae", *common, "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, cwd=ROOT, env=_env())
    assert one.returncode == 1 and two.returncode == 1, two.stderr[-3000:]   # coffee.png has no face
    s1, s2 = json.loads(one.stdout), json.loads(two.stdout)                   # only rank 0 prints
    assert s2["processes"] == 2 and s1["processes"] == 1
    strip = lambda recs: [{k: v for k, v in r.items() if k not in ("rank", "seconds", "output")}  # noqa: E731
                          for r in recs]
    assert strip(_records(tmp_path / "one")) == strip(_records(tmp_path / "two")) == strip(s1["results"])
    assert [r["rank"] for r in _records(tmp_path / "two")] == [0, 1, 0, 1]
    assert [r["status"] for r in s1["results"]] == ["ok", "ok", "ok", "failed"]

    folders = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert folders == sorted(p.name for p in (tmp_path / "two").iterdir()) == ["1", "2", "4", "manifest.jsonl"]
    for name in ("1", "2", "4"):
        a, b = tmp_path / "one" / name, tmp_path / "two" / name
        assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
        for f in a.iterdir():
            if f.name == "result.json":
                ja, jb = json.loads(f.read_text()), json.loads((b / f.name).read_text())
                ja.pop("seconds"), jb.pop("seconds")
                assert ja == jb
            else:
                assert f.read_bytes() == (b / f.name).read_bytes(), f"{name}/{f.name} differs"
