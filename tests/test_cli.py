"""`goae invert` on the real example photos with the tiny pipeline (saved as a pipeline folder)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from goae import cli
from tiny import load_tiny_config, tiny_pipeline

pytest.importorskip("mediapipe")


@pytest.fixture(scope="module")
def weights_dir(parity_dir, tmp_path_factory) -> Path:
    gdir = parity_dir / "goae"
    out = tmp_path_factory.mktemp("weights") / "tiny-goae"
    tiny_pipeline(load_tiny_config(gdir), gdir).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_directions(tmp_path_factory) -> Path:
    """Directions in the tiny model's W space (w_dim 32): the official ones are 512-d."""
    import torch
    from goae.edit import save_direction

    folder = tmp_path_factory.mktemp("directions")
    g = torch.Generator().manual_seed(0)
    for name in ("age", "glass"):
        save_direction(folder / f"{name}.safetensors", torch.randn(1, 14, 32, generator=g))
    return folder


def test_invert_batch_with_a_failure(landmarker, weights_dir, tiny_directions, examples_dir, tmp_path, capsys):
    photos = [examples_dir / "wild" / "astronaut.png", examples_dir / "wild" / "coffee.png",
              examples_dir / "goae" / "real_person" / "1.jpg"]
    out = tmp_path / "out"
    code = cli.main(["invert", *map(str, photos), "--out", str(out), "--weights", str(weights_dir),
                     "--views=-20:0,20:5", "--video", "--frames", "3", "--fps", "12", "--mesh",
                     "--mesh-resolution", "32", "--edit", "age=1.5,glasses=0.5",
                     "--directions", str(tiny_directions)])
    err = capsys.readouterr().err
    assert code == 1  # one photo failed
    assert "coffee.png: error: No face found" in err, err
    assert "2 succeeded, 1 failed" in err
    # no folder, no temp left for coffee; the run's manifest lists all three
    assert sorted(p.name for p in out.iterdir()) == ["1", "astronaut", "manifest.jsonl"]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(m["input"], m["status"]) for m in manifest] == list(zip(map(str, photos), ("ok", "failed", "ok")))
    for name in ("astronaut", "1"):
        meta = json.loads((out / name / "result.json").read_text())
        listed = [f for v in meta["files"].values() for f in (v if isinstance(v, list) else [v])]
        assert all((out / name / f).is_file() for f in listed), listed
        assert {"aligned", "reconstruction", "depth16", "ws", "video", "edit"} <= set(meta["files"])
        assert len(meta["files"]["views"]) == 2 and len(meta["camera"]) == 25
        # --mesh-level auto (default) meshes random weights too: the densest 10% when level 10 is never reached.
        assert {"mesh_glb", "mesh_ply"} <= set(meta["files"]) and "mesh_error" not in meta
        assert meta["edits"] == {"age": 1.5, "glass": 0.5}
        assert sorted(f.name for f in (out / name).iterdir()) == sorted(listed + ["result.json"])


def test_interrupted_run_leaves_nothing(landmarker, repo_examples, tmp_path, monkeypatch):
    from goae.export import bundle

    def boom(*a, **k):
        raise KeyboardInterrupt  # as if Ctrl-C arrived while the video was being written

    monkeypatch.setattr(bundle, "write_video", boom)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):   # any portrait and any weights: the small random pipeline
        cli.main(["invert", str(repo_examples / "astronaut.png"), "--out", str(out),
                  "--weights", "random-small", "--video", "--frames", "2"])
    assert list(out.iterdir()) == []


def test_official_directions_do_not_fit_the_tiny_model(weights_dir, examples_dir, tmp_path, capsys):
    code = cli.main(["invert", str(examples_dir / "wild" / "obama.jpg"), "--out", str(tmp_path / "o"),
                     "--weights", str(weights_dir), "--edit", "age=1",
                     "--directions", str(examples_dir / "goae" / "ws_edit")])
    err = capsys.readouterr().err
    assert code == 2 and "goae: error:" in err and "32" in err, err


def test_bad_arguments_exit_2(tmp_path, repo_examples, capsys):
    assert cli.main(["invert", str(repo_examples / "astronaut.png"), "--out", str(tmp_path),
                     "--weights", str(tmp_path / "nope")]) == 2
    assert "goae: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        cli.main(["invert", "x.jpg", "--out", str(tmp_path), "--edit", "age"])
    assert e.value.code == 2


def test_python_dash_m_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-m", "goae", "invert", "--help"], capture_output=True, text=True,
                       cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0 and "--weights" in r.stdout


def test_mesh_level_option():
    parser = cli.build_parser()
    assert parser.parse_args(["invert", "a.jpg", "--out", "o"]).mesh_level == "auto"
    assert parser.parse_args(["invert", "a.jpg", "--out", "o", "--mesh-level", "12.5"]).mesh_level == 12.5
    assert parser.parse_args(["invert", "a.jpg", "--out", "o"]).precision == "fp32"
    with pytest.raises(SystemExit):
        parser.parse_args(["invert", "a.jpg", "--out", "o", "--mesh-level", "dense"])


@pytest.mark.parametrize("name", sorted(cli.TOOLS))
def test_one_command_runs_every_tool(name, capsys):
    """`goae NAME --help` reaches that tool's own parser, under the name the user typed."""
    with pytest.raises(SystemExit) as stop:
        cli.main([name, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: goae {name} ")


def test_one_command_lists_every_tool(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    for name in [*cli.TOOLS, "invert"]:
        assert name in out


# ------------------------------------------------------------------------------------ the suite's own fixtures
def test_each_test_runs_without_tf32_and_leaves_the_flags_as_it_found_them(tmp_path):
    """tests/conftest.py turns TF32 off for every test (parity is defined in fp32) and gives back the process's
    flags after it, also when the test turned them on. Run in a child pytest with conftest.py as a plugin and a
    spy that records the flags after each test's teardown."""
    tests = Path(__file__).resolve().parent
    (tmp_path / "tf32_spy.py").write_text(
        "import json\nimport torch\n"
        "torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # the process's own\n"
        "def pytest_runtest_logfinish(nodeid):\n"
        f"    with open({str(tmp_path / 'flags.jsonl')!r}, 'a') as f:\n"
        "        f.write(json.dumps([torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32]) + '\\n')\n")
    (tmp_path / "test_tf32_probe.py").write_text(
        "import torch\n"
        "def test_turns_it_on():\n"
        "    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32\n"
        "    torch.backends.cuda.matmul.allow_tf32 = True\n"
        "def test_sees_it_off_again():\n"
        "    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tests), str(tmp_path), str(tests.parent)])}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "conftest", "-p", "tf32_spy", "-p",
                        "no:cacheprovider", "test_tf32_probe.py"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0 and "2 passed" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    flags = [json.loads(line) for line in (tmp_path / "flags.jsonl").read_text().splitlines()]
    assert flags == [[True, True], [True, True]]
