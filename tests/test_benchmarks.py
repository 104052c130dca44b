"""benchmarks/run.py end to end on the small preset: what the table and JSON say is what was measured."""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTO_STAGES = ("encode", "first_render", "generator", "volume_rendering", "superresolution", "afa_mix",
                "afa", "fuse", "final_render", "end_to_end")
VIEW_STAGES = ("novel_view", "preview_view", "preview_fast")
MESH = 24  # a tiny grid keeps the test quick; the real runs use 128^3 and 256^3

# Three Python processes (parent + one per mode) on the small preset: ~30 s on a quiet 2-core CPU.
pytestmark = pytest.mark.slow


def bench_module():
    spec = importlib.util.spec_from_file_location("goae_bench_run", ROOT / "benchmarks" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_json(path: Path) -> dict:
    """An official_speed.py JSON in its own layout (timings rows, memory, machine), with chosen times."""
    rows = {"1_encoder": 0.5, "2_first_render": 6.0, "2a_backbone_4to32": 0.2, "2b_backbone_64to256": 0.4,
            "2c_volume_render_128": 3.0, "2d_superres_to_512": 2.4, "3_afa_plus_mix": 1.3, "3a_afa": 1.25,
            "3b_occlusion_mix": 0.05, "4_final_render": 6.5, "4a_backbone_64to256": 0.4, "4b_volume_render_128": 3.0,
            "4c_superres_to_512": 2.4,
            "5_end_to_end": 14.0, "6_novel_view_frame": 6.1}
    raw = {"what": "official GOAE inference path (test copy)", "threads": 2, "device": "cpu",
           "machine": {"cpu_model": "Test CPU"}, "memory": {"peak_rss_inference_mib": 2048.0},
           "timings": {k: {"label": k, "median_s": v, "min_s": v, "all_s": [v]} for k, v in rows.items()}}
    path.write_text(json.dumps(raw))
    return rows


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench")
    out, ref = tmp / "machine.json", tmp / "official.json"
    rows = official_json(ref)
    # One timed call per stage and no warm-up: this checks the harness, not the speed.
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--preset", "small", "--quick", "--repeats", "1",
           "--warmup", "0", "--threads", "2", "--mesh", str(MESH), "--reference", str(ref), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text()), rows


def run_of(report, mode, batch=1):
    runs = [r for r in report["runs"] if r["mode"] == mode and r["batch"] == batch]
    assert len(runs) == 1, f"expected one {mode} run at batch {batch}, got {len(runs)}"
    return runs[0]


def check_run(run):
    assert "error" not in run and "skipped" not in run, run
    for key in PHOTO_STAGES + VIEW_STAGES + (f"mesh_{MESH}",):
        s = run["stages"][key]
        assert len(s["samples_s"]) == 1 and all(t > 0 for t in s["samples_s"]), (key, s)
        assert s["median_s"] > 0 and s["per_item_s"] == pytest.approx(s["median_s"] / s["items"])
    sub = sum(run["stages"][k]["median_s"] for k in ("generator", "volume_rendering", "superresolution"))
    assert run["stages"]["first_render"]["median_s"] == pytest.approx(sub)
    assert run["stages"]["afa_mix"]["median_s"] == pytest.approx(run["stages"]["afa"]["median_s"] + run["stages"]["fuse"]["median_s"])
    assert run["stages"][f"mesh_{MESH}"]["vertices"] > 0
    assert run["peak_rss_total_bytes"] >= run["peak_rss_bytes"] > 100e6  # torch + the model at least
    # The build's peak is set aside (as official_speed does): the peaks are the inference's, over the built model.
    assert run["peak_reset_after_build"] is True
    assert run["peak_rss_bytes"] >= run["rss_after_build_bytes"] > 100e6
    assert run["cpu_allocator"] in ("glibc", "system")  # nothing preloaded unless --allocator jemalloc


def test_env_is_this_machine(bench):
    _, report, _ = bench
    env = report["env"]
    assert env["threads"] == 2 and env["device"] == "cpu" and report["config"]["preset"] == "small"
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    assert env["cpu_flags"] == {f: f in flags for f in bench_module().CPU_FLAGS}
    align = report["align"]
    assert align.get("median_s", 0) > 0 or "skipped" in align, align


def test_reference_column_speedups_and_verdicts(bench):
    stdout, report, rows = bench
    ref = report["reference"]
    assert ref["cpu_model"] == "Test CPU" and ref["threads"] == 2
    assert ref["stages_s"]["generator"] == pytest.approx(rows["2a_backbone_4to32"] + rows["2b_backbone_64to256"])
    assert ref["stages_s"]["end_to_end"] == rows["5_end_to_end"]
    # Like for like: the official F backbone (4a) runs in its final render, goae's in fuse (AFA + mix).
    assert ref["stages_s"]["afa_mix"] == pytest.approx(rows["3_afa_plus_mix"] + rows["4a_backbone_64to256"])
    assert ref["stages_s"]["fuse"] == pytest.approx(rows["3b_occlusion_mix"] + rows["4a_backbone_64to256"])
    assert ref["stages_s"]["afa"] == rows["3a_afa"]
    assert ref["stages_s"]["final_render"] == pytest.approx(rows["4b_volume_render_128"] + rows["4c_superres_to_512"])
    assert ref["peak_rss_gb"] == pytest.approx(2048 * 2 ** 20 / 1e9)
    fp32, fast = run_of(report, "fp32"), run_of(report, "fast")
    check_run(fp32), check_run(fast)
    line = next(ln for ln in stdout.splitlines() if ln.startswith("end-to-end"))
    cols = line.split()
    e2e = lambda r: r["stages"]["end_to_end"]["per_item_s"]  # noqa: E731
    assert cols[-3] == f"{rows['5_end_to_end']:.2f}"  # official seconds
    assert cols[-2] == f"{rows['5_end_to_end'] / e2e(fp32):.2f}x" and cols[-1] == f"{rows['5_end_to_end'] / e2e(fast):.2f}x"
    assert cols[-4] == f"{e2e(fp32) / e2e(fast):.2f}x"  # fp32 / fast
    verdicts = {(g["goal"], g["mode"]): g for g in report["goals"]}
    g = verdicts[("CPU photo speed-up vs official", "fp32")]
    assert g["value"] == pytest.approx(rows["5_end_to_end"] / e2e(fp32)) and g["met"] == (g["value"] >= 2.5)
    g = verdicts[("CPU peak RSS vs official", "fast")]
    assert g["met"] == (fast["peak_rss_bytes"] / 1e9 <= round(ref["peak_rss_gb"], 2))
    g = verdicts[("CPU photo speed-up vs official", "fast")]
    assert g["target"] == ">= 10.0 x" and g["met"] == (g["value"] >= 10.0)
    assert verdicts[("CPU peak RSS, pipe() + views", "fp32")]["target"] == "<= 1.6 GB"
    # The compute floor: the counted work of a photo and a view over this CPU's best measured rate.
    for run in (fp32, fast):
        c = run["compute"]
        assert c["photo_gflop"] > c["view_gflop"] > 0 and all(r > 0 for r in c["rates_gflops"].values())
        assert c["best_gflops"] == max(c["rates_gflops"].values())
        assert c["photo_floor_s"] == pytest.approx(c["photo_gflop"] / c["best_gflops"])
    assert fp32["compute"]["dtype"] == "float32"
    g = verdicts[("CPU photo speed-up vs official", "fp32")]
    assert g["ceiling"] == pytest.approx(rows["5_end_to_end"] / fp32["compute"]["photo_floor_s"], rel=1e-2)
    assert "compute floor of a photo" in stdout and "compute ceiling here" in stdout


def test_no_reference_no_official_column_no_verdicts(bench):
    _, report, _ = bench
    mod = bench_module()
    report = {**report, "reference": None}
    assert mod.goals(report) == []
    text = mod.table(report, 1)
    assert "official" not in text and "end-to-end" in text
    assert "no verdicts" in mod.goals_text({**report, "goals": []})


def test_bad_reference_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"timings": {}}')
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--preset", "small", "--quick",
                           "--reference", str(bad), "--out", str(tmp_path / "x.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no end-to-end row" in proc.stderr and not (tmp_path / "x.json").exists()


def test_peak_rss_reset_sets_an_earlier_peak_aside():
    """In a fresh interpreter: a 400 MB peak, freed, then reset: VmHWM is back near the current size."""
    code = (f"import importlib.util as u; s = u.spec_from_file_location('b', {str(ROOT / 'benchmarks' / 'run.py')!r}); "
            "m = u.module_from_spec(s); s.loader.exec_module(m)\n"
            "buf = bytearray(b'x') * (400 << 20); del buf\n"
            "high = m.peak_rss_bytes(); ok = m.reset_peak_rss(); print(high, ok, m.peak_rss_bytes(), m.rss_bytes())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    high, ok, low, now = proc.stdout.split()
    assert ok == "True" and int(high) > int(now) + 350e6
    assert int(now) - (16 << 20) <= int(low) < int(high) - 350e6   # a few pages may come between the reads


def test_jemalloc_allocator_runs_the_workers_on_it(tmp_path):
    """--allocator jemalloc preloads an installed jemalloc into the measuring processes (the JSON says
    which allocator each ran on), or refuses in one line where none is installed."""
    from goae.runtime import jemalloc_library

    out = tmp_path / "je.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--preset", "small", "--quick", "--repeats", "1",
           "--warmup", "0", "--threads", "2", "--modes", "fp32", "--mesh", "--allocator", "jemalloc", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    if jemalloc_library() is None:
        assert proc.returncode == 2 and "libjemalloc2" in proc.stderr and not out.exists()
        return
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = run_of(json.loads(out.read_text()), "fp32")
    assert run["cpu_allocator"] == "jemalloc" and run["stages"]["end_to_end"]["median_s"] > 0
