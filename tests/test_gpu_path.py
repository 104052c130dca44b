"""The GPU path without a GPU (issue #28): layout, batching, compilation and host syncs, checked on CPU
and meta tensors with the CUDA queries faked only where a device property is asked for."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from torch.utils._python_dispatch import TorchDispatchMode

from goae import export, fast
from goae.camera import camera_label
from goae.export.bundle import check_weights
from goae.weights.checks import nonfinite_names
from goae.export.video import write_turntable
from goae.export.views import view_batch_size
from goae.models.goae import GOAE
from goae.models.renderer import ImportanceRenderer, generate_planes, inverse_plane_axes, sample_from_planes
from goae.models.stylegan2 import SynthesisBlock
from goae.pipeline import GOAEPipeline


@pytest.fixture(scope="module")
def pipe():
    return GOAEPipeline.from_preset("small", 0)


# ---------------------------------------------------------------------------------------- memory format
def test_memory_format_follows_the_device_type():
    """NHWC only on a CPU, where it was measured faster; a GPU keeps NCHW even when asked for it."""
    assert fast.memory_format_for(True, "cpu") == torch.channels_last
    assert fast.memory_format_for(True, "cuda") == torch.contiguous_format
    assert fast.memory_format_for(False, "cpu") == torch.contiguous_format
    assert fast.memory_format_for(False, "cuda") == torch.contiguous_format
    x = torch.empty(2, 8, 16, 16, device="meta")
    assert x.contiguous(memory_format=fast.memory_format_for(True, "cuda")).is_contiguous()
    assert not x.contiguous(memory_format=fast.memory_format_for(True, "cuda")).is_contiguous(
        memory_format=torch.channels_last)


class _Seen(Exception):
    pass


def _first_conv_layout(channels_last: bool | None, device: str) -> bool:
    """True when a const (b4-like) block's first convolution gets NHWC activations on `device` (stopped
    there: the layers themselves need a real device)."""
    block = SynthesisBlock(0, 16, w_dim=32, resolution=8, img_channels=3, is_last=False)
    block.channels_last = channels_last

    def stop(module, args):
        raise _Seen(args[0].is_contiguous(memory_format=torch.channels_last) and not args[0].is_contiguous())
    hook = block.conv1.register_forward_pre_hook(stop)
    block = block.to_empty(device=device) if device == "meta" else block.to(device)
    try:
        with torch.no_grad(), pytest.raises(_Seen) as seen:
            block(None, None, torch.randn(2, block.num_conv + block.num_torgb, 32, device=device), noise_mode="const")
    finally:
        hook.remove()
    return seen.value.args[0]


def test_fast_path_layout_follows_the_device(pipe):
    """enable_fast_path(channels_last=True) leaves the layout to the device (NHWC on a CPU, NCHW
    elsewhere: a meta tensor stands in for the GPU); channels_last=False forces NCHW."""
    blocks = [m for n, m in fast.compiled_modules(pipe).items() if n.startswith("synthesis.")]
    pipe.enable_fast_path("fp32", channels_last=True)
    try:
        assert all(b.channels_last is None for b in blocks) and pipe.afa.channels_last is None
        layout = blocks[0].channels_last
        assert _first_conv_layout(layout, "cpu") is fast.channels_last_for(True, "cpu") is True
        assert _first_conv_layout(layout, "meta") is fast.channels_last_for(True, "cuda") is False
        pipe.enable_fast_path("fp32", channels_last=False)
        assert all(b.channels_last is False for b in blocks) and pipe.afa.channels_last is False
        assert _first_conv_layout(blocks[0].channels_last, "cpu") is False
    finally:
        pipe.disable_fast_path()


# ---------------------------------------------------------------------------------------- batched views
@pytest.fixture(scope="module")
def result(pipe):
    g = torch.Generator().manual_seed(3)
    return pipe(torch.rand(1, 3, 512, 512, generator=g) * 2 - 1, camera_label(0.1, -0.05), output_type=None)


def test_view_batches_by_device():
    assert view_batch_size("cpu") == 4
    assert view_batch_size("cuda") == view_batch_size(torch.device("cuda", 1)) == GOAE.GPU_RENDER_BATCH == 8


def test_batched_turntable_frames_equal_one_at_a_time(pipe, result, tmp_path):
    """Turntable frames come in batches (one render call and one host copy each), bit-identical on a CPU
    to rendering each frame alone; write_turntable encodes exactly those frames."""
    import av

    cams = pipe.orbit_cameras(5)
    done = []
    batches = list(export.iter_views(pipe, result, cams, progress=lambda i, n: done.append((i, n))))
    assert [b.shape[0] for b in batches] == [4, 1] and done == [(4, 5), (5, 5)]
    alone = [export.iter_views(pipe, result, cams[i:i + 1], batch_size=1) for i in range(5)]
    np.testing.assert_array_equal(np.concatenate(batches), np.concatenate([next(a) for a in alone]))
    preview = np.concatenate(list(export.iter_views(pipe, result, cams, neural_rendering_resolution=32)))
    assert preview.shape == (5, 512, 512, 3) and not np.array_equal(preview, np.concatenate(batches))

    path = write_turntable(pipe, result, tmp_path / "turntable.mp4", frames=5, fps=10, neural_rendering_resolution=32)
    with av.open(str(path)) as f:
        decoded = [fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]
    assert len(decoded) == 5 and decoded[0].shape == (512, 512, 3)
    assert np.abs(decoded[0].astype(int) - preview[0]).mean() < 8  # H.264 at crf 18 of the same frames
    with pytest.raises(export.ExportError, match="frames"):
        write_turntable(pipe, result, tmp_path / "none.mp4", frames=0)
    assert not (tmp_path / "none.mp4").exists()


# ---------------------------------------------------------------------------------------- torch.compile
class _Graphs:
    """A torch.compile backend that runs the captured graphs eagerly and keeps them."""

    def __init__(self):
        self.graphs = []

    def __call__(self, gm, example_inputs):
        self.graphs.append(gm)
        return gm.forward

    def targets(self) -> list[str]:
        return [str(n.target) for gm in self.graphs for n in gm.graph.nodes if n.op in ("call_function", "call_method")]


@pytest.fixture
def dynamo():
    import torch._dynamo

    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


def test_compiled_render_is_dynamic_and_holds_no_constant_setup(pipe, result, dynamo):
    """The compiled renderer recompiles once for a new batch size (then symbolic), not per size, and its
    graphs hold none of the tap constants' setup (host tensors, linalg.inv): render_planes makes them
    outside and passes them in. Called without them, the same renderer traces linalg.inv (the check bites)."""
    g = pipe.generator
    backend = _Graphs()
    fast.apply(pipe, fast.FastPath("fp32", compile=True, compile_backend=backend))
    try:
        with torch.no_grad():
            for n in (1, 2, 3):
                g.render_planes(result.planes.expand(n, -1, -1, -1), result.ws.expand(n, -1, -1),
                                camera_label(0.1, 0.0).expand(n, 25), neural_rendering_resolution=16,
                                deterministic=True, superresolution=False)
            assert len(backend.graphs) <= 2, len(backend.graphs)   # static, then dynamic batch; none for n=3
            assert not [t for t in backend.targets() if "inv" in t.lower() or t.endswith("tensor")]
            ro, rd = g.ray_sampler(camera_label(0.1, 0.0)[:, :16].reshape(-1, 4, 4),
                                   camera_label(0.1, 0.0)[:, 16:25].reshape(-1, 3, 3), 16)
            with warnings.catch_warnings():  # Dynamo's note that it traces through tap_constants' lru_cache
                warnings.simplefilter("ignore")
                g.renderer(result.planes.view(1, 3, 32, 256, 256), g.decoder, ro, rd, g.rendering_kwargs,
                           deterministic=True)
    finally:
        fast.reset(pipe)
    assert [t for t in backend.targets() if "inv" in t.lower()]


class _Affine(torch.nn.Module):  # a module of ours: Dynamo does not trace into torch.nn's own files
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(3, 3))

    def forward(self, x):
        return x @ self.weight + 1


def test_recompile_limit_keeps_many_shapes_compiled(dynamo):
    """More shape specialisations than torch's default limit (8) all run compiled under the fast path's
    options; plain dynamic=False compilation falls back to eager after 8 (what the limit used to do)."""
    def calls(options):
        backend = _Graphs()
        m = _Affine()
        m.compile(**{**options, "backend": backend})
        with dynamo.config.patch(automatic_dynamic_shapes=False):
            for n in range(1, 13):
                m(torch.randn(n, 3))
        dynamo.reset()
        return len(backend.graphs)
    assert calls(fast.compile_options("eager")) == 12
    assert calls({"dynamic": False}) == dynamo.config.recompile_limit == 8


def test_compiler_check_follows_the_device(pipe, monkeypatch):
    """Inductor on CUDA needs Triton and compute capability 7.0+; on a CPU a C++ compiler. Checked for
    the device the pipeline runs on (the CUDA properties are faked; no GPU here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(fast, "_has_triton", lambda: False)
    assert "Triton" in fast.compiler_problem("cuda")
    assert fast.compiler_problem("cuda", "aot_eager") is None
    monkeypatch.setattr(fast, "_has_triton", lambda: True)
    assert fast.compiler_problem("cuda:0") is None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 1))
    assert "7.0" in fast.compiler_problem("cuda")
    monkeypatch.setattr(fast.shutil, "which", lambda name: None)
    assert "C++ compiler" in fast.compiler_problem("cpu") and fast.compiler_problem("cuda", "eager") is None
    with pytest.raises(fast.FastPathError, match="C\\+\\+ compiler"):
        pipe.enable_fast_path("fp32", compile=True)
    pipe.disable_fast_path()


# ---------------------------------------------------------------------------------------- host syncs
class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def test_weight_check_reads_the_device_once(pipe):
    """check_weights flags NaN/inf tensors with one stacked read, no per-tensor .item()/bool() (each a
    host sync on a GPU), and still names every bad tensor."""
    sd = dict(pipe.afa.state_dict())
    names = [k for k, t in sd.items() if t.is_floating_point()]
    assert len(names) > 10
    with _Ops() as seen:
        assert nonfinite_names(sd.items()) == []
    assert seen.ops.count("aten._local_scalar_dense.default") == 0 and seen.ops.count("aten.stack.default") == 1
    damaged = {k: t.clone() for k, t in sd.items()}
    damaged[names[3]].view(-1)[0] = float("nan")
    damaged[names[-1]].view(-1)[-1] = float("-inf")
    assert nonfinite_names(damaged.items()) == [names[3], names[-1]]
    assert nonfinite_names([("m", torch.empty(3, device="meta")), ("i", torch.ones(2, dtype=torch.long))]) == []

    name, p = list(pipe.afa.named_parameters())[2]
    keep = p.detach().clone()
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    try:
        with pytest.raises(export.ExportError, match=f"afa.{name}"):
            check_weights(pipe)
    finally:
        with torch.no_grad():
            p.copy_(keep)
    check_weights(pipe)


def test_reference_renderer_inverts_its_axes_once():
    """The reference renderer keeps the inverse of its plane axes per device: no linalg.inv per render."""
    torch.manual_seed(0)
    planes = torch.randn(1, 3, 8, 16, 16)
    ro = torch.tensor([[[0.0, 0.0, 2.0]]]).expand(1, 6, 3)
    rd = torch.nn.functional.normalize(torch.randn(1, 6, 3) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    opts = dict(ray_start=1.0, ray_end=3.0, box_warp=1.0, depth_resolution=4, depth_resolution_importance=4)
    decoder = lambda f, d: {"rgb": f.mean(1)[..., :3], "sigma": f.mean(1)[..., :1]}  # noqa: E731
    r = ImportanceRenderer()
    with _Ops() as seen:
        first = r(planes, decoder, ro, rd, opts, deterministic=True)
        second = r(planes, decoder, ro, rd, opts, deterministic=True)
    assert sum("linalg_inv" in op for op in seen.ops) == 1   # the first render's, kept
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    want = sample_from_planes(generate_planes(), planes, ro + rd, 1.0)
    got = sample_from_planes(generate_planes(), planes, ro + rd, 1.0, inv_plane_axes=inverse_plane_axes(generate_planes()))
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_sharded_inversion_sets_each_process_device(monkeypatch, tmp_path, capsys):
    """Under torchrun (WORLD_SIZE > 1) with CUDA, goae invert makes LOCAL_RANK its current device before
    loading. No GPU here: CUDA availability is faked and set_device recorded; loading on the absent GPU
    then fails as one setup error (exit 2)."""
    from goae import cli

    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    photo = tmp_path / "p.png"
    Image.new("RGB", (64, 64)).save(photo)
    assert cli.main(["invert", str(photo), "--out", str(tmp_path / "out"), "--weights", "random"]) == 2
    assert chosen == [1]
    err = capsys.readouterr().err
    assert "goae: error:" in err and "cuda" in err.lower(), err
