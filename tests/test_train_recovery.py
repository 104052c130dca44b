"""Recovering a run (issue #15.12/13): damaged logs and checkpoints, temporaries of killed writes, the
`latest` pointer, FIFOs and folders as checkpoints, a resume with no checkpoint, a full disk."""
from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny import make_eg3d_dataset, one_thread  # noqa: F401  (autouse fixture)
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `train` is a top-level folder, not part of the installed package
    sys.path.insert(0, str(ROOT))

from train.checkpoint import (CheckpointError, find_latest, load_checkpoint, load_latest,  # noqa: E402
                              remove_stale_temps, save_checkpoint)
from train.run import append_line, main, truncate_log  # noqa: E402

TINY = ROOT / "train" / "configs" / "tiny.yaml"
PHOTOS = ("1.jpg", "2.jpg", "4.jpg", "5.jpg")



@pytest.fixture(scope="module")
def dataset_dir(tmp_path_factory, examples_dir) -> Path:
    return make_eg3d_dataset(tmp_path_factory.mktemp("ds"), examples_dir, PHOTOS)


@pytest.fixture
def small_disk(tmp_path, request):
    """A real small file system (tmpfs), 1 MiB unless the test asks for another size: smaller than a tiny
    checkpoint (3.6 MB); 8 MiB holds a checkpoint but not the final pipeline folder (13 MB)."""
    d = tmp_path / "disk"
    d.mkdir()
    size = getattr(request, "param", "1m")
    try:
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("a full disk is simulated with a small tmpfs, and there is no `mount` command here")
    if p.returncode != 0:
        pytest.skip(f"a full disk is simulated with a small tmpfs, and mounting one is not permitted here: {p.stderr.strip()}")
    yield d
    subprocess.run(["umount", "-l", str(d)], check=False)


def train(data: Path, out: Path, *extra: str) -> int:
    return main(["--config", str(TINY), "--data", str(data), "--out", str(out), "--stage", "encoder",
                 "--set", "data.workers=0", "--set", "log.progress=false", *extra])


def steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]


def hidden(run: Path) -> list[str]:
    return sorted(str(p.relative_to(run)) for p in run.rglob(".*"))


# ------------------------------------------------------------------------------------------ end to end
def test_resume_past_damage(dataset_dir, tmp_path, capsys):
    """A corrupt latest checkpoint, a half-written log line and big temporaries of killed writes: the run
    resumes from the checkpoint before, cleans up, and ends exactly where an undamaged run ends."""
    run, args = tmp_path / "run", ("--max-steps", "2", "--set", "log.ckpt_every=1", "--set", "log.keep=5")
    assert train(dataset_dir, run, *args) == 0
    ckpts = run / "checkpoints"
    reference = torch.load(ckpts / "step_0000002.pt", weights_only=True)
    blob = (ckpts / "step_0000002.pt").read_bytes()
    (ckpts / "step_0000002.pt").write_bytes(blob[: len(blob) // 2])  # killed mid-copy, a bad disk ...
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "stage": "encoder", "l2": 0.1')  # killed mid-line
    (ckpts / ".step_0000003.pt.tmp-k1ll3d0x.pt").write_bytes(b"\0" * 2**20)
    (run / ".log.jsonl.tmp-abcdefgh.jsonl").write_text("{}")
    (run / ".final.tmp-zz_99xyz").mkdir()
    (run / ".final.tmp-zz_99xyz" / "weights.safetensors").write_bytes(b"\0" * 1000)
    (run / ".keep-me").write_text("not ours")
    capsys.readouterr()

    assert train(dataset_dir, run, *args, "--resume") == 0
    err = capsys.readouterr().err
    assert "step_0000002.pt" in err and "trying the checkpoint before it" in err, err
    assert "removed 3 temporary file(s) (1.0 MiB)" in err and "unreadable line" in err, err
    resumed = torch.load(ckpts / "step_0000002.pt", weights_only=True)
    assert resumed["step"] == 2 and resumed["data_position"] == reference["data_position"]
    for key in ("model", "discriminator"):
        assert all(torch.equal(resumed[key][k], reference[key][k]) for k in reference[key]), key
    assert steps(run) == [1, 2]
    assert hidden(run) == [".keep-me"]


def test_resume_without_checkpoint_starts_a_new_log(dataset_dir, tmp_path, capsys):
    """Killed before its first checkpoint, then --resume: the run starts at step 0, and its log with it."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2)) + '{"step": 3, "lo')
    assert train(dataset_dir, run, "--max-steps", "1", "--resume") == 0
    assert steps(run) == [1]


@pytest.mark.parametrize("small_disk", ["1m", "8m"], indirect=True)
def test_disk_full_is_one_clear_line(dataset_dir, small_disk, capsys):
    """1 MiB: the checkpoint (torch.save) does not fit; 8 MiB: the final/ folder (safetensors) does not."""
    run = small_disk / "run"
    assert train(dataset_dir, run, "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: no space left on the device of {run}"), err
    assert steps(run) == [1] and (run / "config.json").is_file()  # what fitted is whole
    assert hidden(run) == [] and not (run / "final").exists()
    saved = [p.name for p in (run / "checkpoints").iterdir()]
    if saved:  # 8 MiB: a whole checkpoint, and the run can go on from it elsewhere
        assert saved == ["latest", "step_0000001.pt"] and load_checkpoint(run / "checkpoints" / saved[1])["step"] == 1


# ------------------------------------------------------------------------------------------ units
def test_append_line_all_or_nothing(small_disk):
    log = small_disk / "log.jsonl"
    append_line(log, json.dumps({"step": 1}))
    with open(small_disk / "filler", "wb", buffering=0) as f:
        with pytest.raises(OSError):
            while True:
                f.write(b"\0" * 4096)
    with pytest.raises(OSError) as e:
        append_line(log, json.dumps({"step": 2, "pad": "x" * 100_000}))
    assert e.value.errno == errno.ENOSPC
    assert log.read_text() == '{"step": 1}\n'


def test_truncate_log(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n\n{"step": 3}\n{"step": 4, "l')
    truncate_log(log, 3)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n{"step": 3}\n'
    truncate_log(log, 0)
    assert log.read_text() == ""


def test_corrupt_latest_falls_back(tmp_path, capsys):
    for step in (3, 6):
        save_checkpoint(tmp_path, step, {"step": step}, keep=5)
    (tmp_path / "checkpoints" / "step_0000006.pt").write_bytes(b"PK\x03\x04 truncated")
    path, state = load_latest(tmp_path)
    assert path.name == "step_0000003.pt" and state["step"] == 3
    assert "cannot load checkpoint" in capsys.readouterr().err
    (tmp_path / "checkpoints" / "step_0000003.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="no checkpoint of .* can be loaded"):
        load_latest(tmp_path)
    assert load_latest(tmp_path / "elsewhere") is None


def test_latest_pointer_stays_in_its_folder(tmp_path, capsys):
    save_checkpoint(tmp_path / "run", 3, {"step": 3}, keep=5)
    save_checkpoint(tmp_path, 99, {"step": 99}, keep=5)  # tmp_path/checkpoints/step_0000099.pt: outside the run
    pointer = tmp_path / "run" / "checkpoints" / "latest"
    for target in ("../../checkpoints/step_0000099.pt", "/etc/passwd", "step_0000099.pt"):
        pointer.write_text(target)
        assert find_latest(tmp_path / "run").name == "step_0000003.pt"
        assert load_latest(tmp_path / "run")[1]["step"] == 3
    assert "must name a checkpoint file of its folder" in capsys.readouterr().err


def test_fifo_or_folder_as_checkpoint(tmp_path):
    """Clear errors, and no hang: opening a FIFO for reading blocks until a writer comes."""
    save_checkpoint(tmp_path, 3, {"step": 3}, keep=5)
    folder = tmp_path / "checkpoints"
    os.mkfifo(folder / "step_0000006.pt")
    (folder / "step_0000009.pt").mkdir()
    (folder / "latest").write_text("step_0000006.pt")
    def hang(*_):
        raise TimeoutError("blocked on a FIFO")

    old = signal.signal(signal.SIGALRM, hang)  # a hang fails the test instead of stalling the suite
    signal.alarm(30)
    try:
        with pytest.raises(CheckpointError, match="not a regular file"):
            load_checkpoint(folder / "step_0000006.pt")
        with pytest.raises(CheckpointError, match="is a folder"):
            load_checkpoint(folder / "step_0000009.pt")
        assert load_latest(tmp_path)[1]["step"] == 3
        os.unlink(folder / "latest")
        os.mkfifo(folder / "latest")
        assert load_latest(tmp_path)[1]["step"] == 3
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_remove_stale_temps_only_ours(tmp_path):
    names = [".step_0000003.pt.tmp-abcd_123.pt", ".latest.tmp-x1y2z3w4", ".final.old-q9w8e7r6"]
    for n in names:
        (tmp_path / n).write_bytes(b"x" * 10)
    keep = [".hidden", "step_0000003.pt", ".git", ".a.tmp-toolong123.pt"]
    for n in keep:
        (tmp_path / n).write_bytes(b"y")
    assert remove_stale_temps(tmp_path, tmp_path / "missing") == (3, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
