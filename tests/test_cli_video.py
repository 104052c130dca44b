"""`goae invert` on clips, and the command-line conventions of issue #16 item 7: --version, --json on stdout,
mediapipe's native log lines kept off stderr unless --verbose."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import goae
from goae import cli
from test_video import StubPipeline, _streams, clip, clip_mp4, source  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"goae {goae.__version__}"
    r = subprocess.run([sys.executable, "-m", "goae", "--version"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == f"goae {goae.__version__}"


@pytest.mark.parametrize("option", ["--clip-view=nan:0", "--clip-view=0:0,1:1", "--clip-view=round",
                                    "--orbit-seconds=0", "--orbit-seconds=inf", "--batch-size=0",
                                    "--batch-size=1.5", "--max-frames=-1"])
def test_bad_clip_options(option, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["invert", "a.mp4", "--out", str(tmp_path / "o"), option])
    assert e.value.code == 2 and not (tmp_path / "o").exists()
    if option.startswith("--clip-view"):  # the view's own message, and the other choice
        err = capsys.readouterr().err
        assert "argument --clip-view: view " in err and "(or 'orbit')" in err, err


def test_clip_options_reach_the_library():
    args = cli.build_parser().parse_args(["invert", "a.mp4", "--out", "o", "--clip-view=-20:5", "--side-by-side",
                                          "--batch-size", "2", "--no-smooth", "--no-audio", "--max-frames", "9",
                                          "--face-index", "1", "--orbit-seconds", "3"])
    o = cli.video_options(args)
    assert (o.view, o.side_by_side, o.batch_size, o.smoothing, o.audio, o.max_frames, o.face_index) == \
        ((-20.0, 5.0), True, 2, None, False, 9, 1)
    assert cli.video_options(cli.build_parser().parse_args(["invert", "a.mp4", "--out", "o"])).view is None


def test_clip_through_the_cli(clip_mp4, tmp_path, capsys, monkeypatch):  # noqa: F811
    """A clip and a folder holding another: one folder each, --json summary on stdout, manifest, --resume."""
    import goae.pipeline
    monkeypatch.setattr(goae.pipeline, "load_pipeline", lambda *a, **k: StubPipeline())
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "take2.mov").write_bytes(clip_mp4.read_bytes())   # what PyAV reads, whatever the suffix says
    (folder / "notes.txt").write_text("not an input")
    out = tmp_path / "out"
    argv = ["invert", str(clip_mp4), str(folder), "--out", str(out), "--weights", "stub", "--json",
            "--max-frames", "6", "--clip-view=25:0", "--side-by-side"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert (summary["inputs"], summary["succeeded"], summary["failed"], summary["processes"]) == (2, 2, 0, 1)
    first = summary["results"][0]
    assert first["kind"] == "video" and first["frames"] == 6 and first["frames_with_face"] == 5  # 5 is covered
    assert first["output"] == str(out / "clip")
    assert sorted(p.name for p in out.iterdir()) == ["clip", "manifest.jsonl", "take2"]
    assert sorted(p.name for p in (out / "clip").iterdir()) == ["reconstruction.mp4", "result.json",
                                                               "side_by_side.mp4", "view_yaw+25_pitch+0.mp4"]
    assert _streams(out / "take2" / "reconstruction.mp4")["audio"] == ["aac"]
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(m["input"], m["status"]) for m in manifest] == [(str(clip_mp4), "ok"), (str(folder / "take2.mov"), "ok")]

    assert cli.main(argv + ["--resume"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["skipped"] == 2 and summary["succeeded"] == 0
    # without --resume an existing result is an error for that input (never silently replaced)
    assert cli.main(argv[:-1] + ["--no-audio"]) == 1
    err = capsys.readouterr().err
    assert "already exists" in err and "Traceback" not in err


def test_native_log_filter():
    """mediapipe logs through absl straight to fd 2; those lines go, everything else stays, in order."""
    script = textwrap.dedent("""
        import os, sys
        from goae.cli import native_log_filter
        with native_log_filter():
            os.write(2, b"W0000 00:00:1795622140.513272    8212 face_landmarker_graph.cc:181] noise\\n")
            os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
            os.write(2, b"WARNING: Logging before InitGoogle() is written to STDERR\\n")
            os.write(2, b"E0000 00:00:1.5  1 x.cc:1] a real error\\n")
            print("python line", file=sys.stderr)
            os.write(2, b"native line\\n")
        print("after", file=sys.stderr)
        os.write(2, b"W0000 00:00:1.5  1 x.cc:1] after the block: kept\\n")
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert "noise" not in r.stderr and "XNNPACK" not in r.stderr and "InitGoogle" not in r.stderr, r.stderr
    assert lines[-2:] == ["after", "W0000 00:00:1.5  1 x.cc:1] after the block: kept"]
    assert set(lines[:-2]) == {"E0000 00:00:1.5  1 x.cc:1] a real error", "python line", "native line"}
