"""The fused C++ render kernel (goae/models/kernels.py) against the renderer's PyTorch fast path.

The kernel is built on first use (once per machine, cached); where it cannot be built the renderer
must keep the PyTorch path with one warning, which the fallback tests check without a compiler. The
build tests run real builds in subprocesses with fresh TORCH_EXTENSIONS_DIRs: killed mid-build, two at
once, a compiler that never returns, a lock that is never released."""
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from goae.models import kernels
from goae.models.renderer import generate_planes
from goae.models.renderer_fused import FusedImportanceRenderer, TriplaneTaps

from test_renderer_fast import OPTIONS, make_decoder, make_scene

TOL = 1e-5


def built() -> bool:
    return kernels.available()


needs_kernel = pytest.mark.skipif("not built()", reason="the fused kernel could not be built here")


def render(renderer, planes, decoder, ray_origins, ray_directions, options=OPTIONS, **kw):
    with torch.no_grad():
        return renderer(planes, decoder, ray_origins, ray_directions, options, deterministic=True, **kw)


@needs_kernel
@pytest.mark.parametrize("features", [True, False])
@pytest.mark.parametrize("box_warp", [1.0, 0.6])  # 0.6: many samples outside the box (zero border)
# (12 samples, 10^2 rays): scanline order, tiles straddle rays and the batch; (20, 20^2): 16 x 16 ray
# blocks with partial blocks at the edges and a partial tile of 4 samples per ray.
@pytest.mark.parametrize("samples,res", [(12, 10), (20, 20)])
def test_kernel_equals_pytorch_fast_path(features, box_warp, samples, res):
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2, res=res)
    options = dict(OPTIONS, box_warp=box_warp, depth_resolution=samples, depth_resolution_importance=samples)
    torch_path = render(FusedImportanceRenderer(kernels=False), planes, decoder, ray_origins, ray_directions, options,
                        features=features)
    fused = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions, options, features=features)
    for want, got in zip(torch_path, fused):
        if want is None:
            assert got is None
            continue
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().max() <= TOL
    assert (torch_path[2] > 0.5).any() and (torch_path[2] < 0.5).any()


@needs_kernel
def test_kernel_decode_equals_decoder_on_random_points():
    """Direct check of sigma and the 32 features (the MLP at its real widths, points in and out of the box)."""
    decoder = make_decoder(seed=3)
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 32, 20, 24, generator=g)  # H != W
    taps = TriplaneTaps(planes, generate_planes(), 1.0)
    origins = (torch.rand(2, 37, 3, generator=g) - 0.5) * 1.6
    directions = torch.nn.functional.normalize(torch.randn(2, 37, 3, generator=g), dim=-1)
    depths = torch.rand(2, 37, 5, generator=g) * 0.5
    with torch.no_grad():
        sigma, rgb = kernels.decode_rays(taps, decoder, origins, directions, depths)
        sigma_only, none = kernels.decode_rays(taps, decoder, origins, directions, depths, features=False)
        points = (origins.unsqueeze(-2) + depths.unsqueeze(-1) * directions.unsqueeze(-2)).reshape(2, -1, 3)
        want_sigma, want_rgb = decoder.decode_plane_sum(taps(points), 3)
    assert none is None and torch.equal(sigma_only, sigma)  # the same code computes sigma
    assert (sigma.reshape(-1) - want_sigma).abs().max() <= TOL * max(1.0, want_sigma.abs().max().item())
    assert (rgb.reshape(-1, 32) - want_rgb).abs().max() <= TOL


@needs_kernel
def test_kernel_depth_only_is_bit_identical():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    full = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)
    depth_only = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions, features=False)
    assert torch.equal(full[1], depth_only[1]) and torch.equal(full[2], depth_only[2])


def _forbid_kernel(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the fused kernel must not run here")
    monkeypatch.setattr(kernels, "decode_rays", fail)


def test_disabled_by_env_uses_the_pytorch_path(monkeypatch):
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(1)
    want = render(FusedImportanceRenderer(kernels=False), planes, decoder, ray_origins, ray_directions)
    monkeypatch.setenv("GOAE_NO_KERNELS", "1")
    _forbid_kernel(monkeypatch)
    assert not kernels.available()
    got = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_autograd_and_autocast_use_the_pytorch_path(monkeypatch):
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(1)
    _forbid_kernel(monkeypatch)
    p = planes.clone().requires_grad_(True)
    _, depth, _ = FusedImportanceRenderer()(p, decoder, ray_origins, ray_directions, OPTIONS, deterministic=True)
    depth.sum().backward()
    assert p.grad.abs().max() > 0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)


def test_failed_build_falls_back_with_one_warning(monkeypatch, caplog):
    monkeypatch.delenv("GOAE_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_state", {"loaded": False, "ok": False})

    def no_compiler():
        raise RuntimeError("Error building extension: c++: command not found")
    monkeypatch.setattr(kernels, "_build", no_compiler)
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(1)
    want = render(FusedImportanceRenderer(kernels=False), planes, decoder, ray_origins, ray_directions)
    with caplog.at_level(logging.WARNING, logger="goae.models.kernels"):
        first = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)
        second = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)
    warnings = [r for r in caplog.records if "fused CPU render kernel" in r.getMessage()]
    assert len(warnings) == 1 and "command not found" in warnings[0].getMessage()
    assert all(torch.equal(a, b) for a, b in zip(first, want)) and all(torch.equal(a, b) for a, b in zip(second, want))


def _op_inputs(features=True):
    decoder = make_decoder(seed=3)
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(1, 3, 32, 12, 12, generator=g)
    taps = TriplaneTaps(planes, generate_planes(), 1.0)
    origins = (torch.rand(1, 9, 3, generator=g) - 0.5) * 1.6
    directions = torch.nn.functional.normalize(torch.randn(1, 9, 3, generator=g), dim=-1)
    depths = torch.rand(1, 9, 4, generator=g) * 0.5
    fc0, fc2 = decoder.net[0], decoder.net[2]
    w0 = (fc0.weight * (fc0.weight_gain / 3)).t().contiguous().detach()
    w2 = (fc2.weight * fc2.weight_gain).detach()
    return (taps.table, 12, 12, taps.A.contiguous(), taps.b.contiguous(), origins, directions, depths, w0,
            (fc0.bias * fc0.bias_gain).detach(), w2[0].contiguous(), w2[1:].t().contiguous(),
            (fc2.bias * fc2.bias_gain).detach(), features)


@needs_kernel
@pytest.mark.parametrize("features", [True, False])
def test_kernel_op_schema_and_fake_implementation(features):
    """torch.library's own checks: schema, fake (meta) kernel shapes against the real op, so that
    torch.compile can trace through it."""
    args = _op_inputs(features)
    torch.library.opcheck(torch.ops.goae_kernels.triplane_decode.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@needs_kernel
def test_kernel_refuses_other_devices_and_dtypes():
    """The op itself refuses what it cannot read (it does not rely on the Python side filtering)."""
    args = list(_op_inputs())
    with pytest.raises(RuntimeError, match="float32 CPU tensors only"):  # a meta call reaches the fake kernel
        torch.ops.goae_kernels.triplane_decode(*[a.to("meta") if isinstance(a, torch.Tensor) else a for a in args])
    bad = list(args)
    bad[7] = bad[7].double()  # depths as float64
    with pytest.raises(RuntimeError, match="float32 CPU tensors only"):
        torch.ops.goae_kernels.triplane_decode(*bad)
    bad = list(args)
    bad[7] = bad[7][:, :5]  # depths for fewer rays than the origins
    with pytest.raises(RuntimeError, match="rays must be"):
        torch.ops.goae_kernels.triplane_decode(*bad)


# ----------------------------------------------------------------------------------- the fused layer epilogue
def _epilogue_inputs(layout, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, 9, 11, generator=g) * 300  # past the clamp on both sides
    x[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0])
    x[1, 3, 2, 5] = 1e-40  # a subnormal
    b = torch.randn(24, generator=g)
    noise = torch.randn(9, 11, generator=g)
    return x.contiguous(memory_format=layout), b, noise


@needs_kernel
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("with_noise", [True, False])
@pytest.mark.parametrize("clamp", [256.0, None])
def test_fused_epilogue_is_bit_identical(layout, with_noise, clamp, monkeypatch):
    """bias_act in place (noise + bias + lrelu + gain + clamp) through the fused op equals the op-by-op path
    bit for bit, NaN, infinities, -0 and subnormals included, in both memory layouts."""
    from goae.models.ops import bias_act
    x, b, noise = _epilogue_inputs(layout)
    noise = noise if with_noise else None
    calls = []
    real = kernels.bias_lrelu_
    monkeypatch.setattr(kernels, "bias_lrelu_", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        got = bias_act(x.clone(memory_format=layout), b, act="lrelu", gain=2 ** 0.5, clamp=clamp, inplace=True,
                       noise=noise)
        monkeypatch.setenv("GOAE_NO_KERNELS", "1")
        want = bias_act(x.clone(memory_format=layout), b, act="lrelu", gain=2 ** 0.5, clamp=clamp, inplace=True,
                        noise=noise)
    assert calls == [1]
    assert got.is_contiguous(memory_format=layout)
    assert torch.equal(got.nan_to_num(7.0), want.nan_to_num(7.0)) and torch.equal(got.isnan(), want.isnan())
    assert torch.equal(torch.signbit(got), torch.signbit(want))


@needs_kernel
def test_fused_epilogue_leaves_other_cases_to_pytorch(monkeypatch):
    """Out of place, under autograd, bfloat16, per-sample noise and other activations keep the op-by-op path."""
    from goae.models.ops import bias_act
    monkeypatch.setattr(kernels, "bias_lrelu_", lambda *a, **k: pytest.fail("the fused epilogue must not run here"))
    x, b, noise = _epilogue_inputs(torch.channels_last)
    x = x.nan_to_num(0.0)
    bias_act(x.clone(), b, act="lrelu", inplace=False)
    bias_act(x.clone().requires_grad_(True), b, act="lrelu", inplace=True)
    bias_act(x.clone().bfloat16(), b.bfloat16(), act="lrelu", inplace=True, noise=noise)
    bias_act(x.clone(), b, act="lrelu", inplace=True, noise=torch.randn(2, 1, 9, 11))
    bias_act(x.clone(), b, act="relu", inplace=True)


@needs_kernel
def test_fused_epilogue_refuses_bad_inputs():
    x, b, noise = _epilogue_inputs(torch.contiguous_format)
    op = torch.ops.goae_kernels.bias_lrelu_
    with pytest.raises(RuntimeError, match="float32 CPU tensor"):
        op(x.double(), noise.double(), b.double(), 0.2, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="b must be"):
        op(x, noise, b[:5], 0.2, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="noise must be"):
        op(x, noise[:4], b, 0.2, 1.0, -1.0)
    with pytest.raises(RuntimeError, match="contiguous"):
        op(x.transpose(2, 3), None, b, 0.2, 1.0, -1.0)


# ----------------------------------------------------------------------------------- building: no hang, ever
ROOT = Path(__file__).resolve().parents[1]
# A process that renders would do this on first use: build (or find) the kernel, load it, say whether it runs.
PROBE = ("import json, torch; from goae.models import kernels; ok = kernels.available(); "
         "print(json.dumps([ok, hasattr(torch.ops.goae_kernels, 'triplane_decode')]))")
needs_tools = pytest.mark.skipif(not (shutil.which("c++") and shutil.which("ninja")), reason="no c++ or ninja here")


def build_env(ext_dir: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GOAE_NO_KERNELS"}
    # A real build on a loaded 2-core machine can pass the default 300 s limit; the probe's own timeout is 600 s.
    env.update(TORCH_EXTENSIONS_DIR=str(ext_dir), OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT),
               GOAE_KERNEL_BUILD_TIMEOUT="540")
    env.update(extra)
    return env


def run_probe(env: dict, code: str = PROBE) -> subprocess.CompletedProcess:
    # Generous: a hang fails here instead of stalling the suite; a real build takes ~30 s (minutes if loaded).
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)


def warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "fused CPU render kernel" in line]


def wait_for(condition, what: str, proc: subprocess.Popen, limit: float = 300) -> None:
    end = time.monotonic() + limit
    while not condition():
        if proc.poll() is not None:
            pytest.fail(f"the first process exited before {what}: {proc.communicate()}")
        if time.monotonic() > end:
            pytest.fail(f"no {what} after {limit} s")
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # after the state
        except (OSError, ValueError, IndexError):
            continue
    found, todo = [], [pid]
    while todo:
        pid = todo.pop()
        kids = [p for p, parent in parents.items() if parent == pid]
        found += kids
        todo += kids
    return found


@pytest.mark.slow
@needs_tools
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("killed", ["caller", "caller and build"])
def test_killed_build_never_makes_the_next_process_hang(tmp_path, killed):
    """`kill -9` of a process while it builds (the issue's reproduction), and of its whole build (an OOM
    kill, a container restart: torch's lock file stays behind): the next process finishes with the kernel."""
    env = build_env(tmp_path)
    first = subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    baton = lambda: list(tmp_path.glob("goae_kernels_*/lock"))   # torch's lock: the build is under way
    try:
        wait_for(lambda: baton(), "build under way", first)
        builders = descendants(first.pid)   # the build child, ninja, the compiler
        first.kill()
        if killed == "caller and build":
            for pid in builders:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        first.wait(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
        first.communicate()
    if killed == "caller and build":
        assert builders and baton(), "the build should have been killed while torch's lock file existed"
    second = run_probe(env)
    assert second.returncode == 0, second.stderr
    assert json.loads(second.stdout.splitlines()[-1]) == [True, True], second.stderr
    assert not warning_lines(second.stderr)
    assert not baton() and list(tmp_path.glob("goae_kernels_*/goae-build.ok"))


@pytest.mark.slow
@needs_tools
def test_two_processes_building_at_once_both_finish(tmp_path):
    """One builds; the other waits on the lock and loads what the first built (nothing is built twice)."""
    code = ("import json; from goae.models import kernels; r = kernels.build(); "
            "print(json.dumps([r.built, kernels.available()]))")
    env = build_env(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    results = sorted(json.loads(out.splitlines()[-1]) for out, _ in outs)
    assert results == [[False, True], [True, True]], outs
    assert len(list(tmp_path.glob("goae_kernels_*/*.so"))) == 1


@needs_tools
def test_a_lock_that_is_never_released_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    """Another builder holds the lock past the limit: this process renders with the PyTorch path, one warning."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("GOAE_KERNEL_BUILD_TIMEOUT", "1")
    monkeypatch.delenv("GOAE_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_state", {"loaded": False, "ok": False})
    folder = kernels.build_folder()
    folder.mkdir(parents=True)
    with open(folder / "goae-build.lock", "w") as holder:
        fcntl.flock(holder, fcntl.LOCK_EX)   # a separate open file: it excludes this process's own attempt too
        decoder = make_decoder()
        planes, ray_origins, ray_directions = make_scene(1)
        want = render(FusedImportanceRenderer(kernels=False), planes, decoder, ray_origins, ray_directions)
        _forbid_kernel(monkeypatch)
        with caplog.at_level(logging.WARNING, logger="goae.models.kernels"):
            got = render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)
            render(FusedImportanceRenderer(), planes, decoder, ray_origins, ray_directions)
    warnings = [r.getMessage() for r in caplog.records if "fused CPU render kernel" in r.getMessage()]
    assert len(warnings) == 1 and "another process is still building it" in warnings[0], warnings
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    assert not list(folder.glob("*.so"))


def test_no_compiler_falls_back_with_one_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.delenv("GOAE_NO_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_state", {"loaded": False, "ok": False})
    with caplog.at_level(logging.WARNING, logger="goae.models.kernels"):
        assert not kernels.available() and not kernels.available()
    warnings = [r.getMessage() for r in caplog.records if "fused CPU render kernel" in r.getMessage()]
    assert len(warnings) == 1 and "no C++ compiler" in warnings[0], warnings


@needs_tools
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")
def test_a_build_that_never_ends_is_stopped_with_everything_it_started(tmp_path):
    """A compiler that never returns: the process falls back after GOAE_KERNEL_BUILD_TIMEOUT with one warning
    line, and the compiler it started is gone (the child's whole process group is killed)."""
    pid_file = tmp_path / "compiler.pid"
    compiler = tmp_path / "hanging-c++"
    compiler.write_text(f"#!/bin/sh\necho $$ > {pid_file}\nexec sleep 600\n")
    compiler.chmod(0o755)
    env = build_env(tmp_path / "ext", CXX=str(compiler), TORCH_DONT_CHECK_COMPILER_ABI="1",
                    GOAE_KERNEL_BUILD_TIMEOUT="90")   # the child's torch import must fit in it, even when loaded
    proc = run_probe(env)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.splitlines()[-1]) == [False, False]
    lines = warning_lines(proc.stderr)
    assert len(lines) == 1 and "took longer than" in lines[0], proc.stderr
    assert pid_file.exists(), "the hanging compiler never ran"
    assert not Path(f"/proc/{int(pid_file.read_text())}").exists(), "the compiler outlived the build"
    folder, = (tmp_path / "ext").iterdir()   # nothing half-built is left to pass for up to date next time
    assert sorted(p.name for p in folder.iterdir()) == ["goae-build.lock", "goae-build.log"]


def test_main_reports_and_fails_without_a_compiler(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-c++"))
    monkeypatch.delenv("GOAE_NO_KERNELS", raising=False)
    assert kernels.main([]) == 1
    err = capsys.readouterr().err
    assert "could not build" in err and "no C++ compiler" in err and "PyTorch path" in err
    monkeypatch.setenv("GOAE_NO_KERNELS", "1")
    assert kernels.main([]) == 0 and "disabled" in capsys.readouterr().out
