"""Fast paths (goae.fast, GOAEPipeline.enable_fast_path) against the plain fp32 path.

Small random pipeline (GOAEPipeline.from_preset("small")): same code paths as the released model.
Tolerances:
- channels-last vs NCHW (both fp32): 1e-4 absolute (only the convolution summation order differs);
- bf16 autocast vs fp32: image PSNR >= 30 dB (range [-1, 1]) and max abs <= 0.25, ws within 0.1;
  bf16 keeps ~3 significant digits and the random model's outputs reach |x| ~ 3.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from goae import fast, runtime
from goae.camera import camera_label
from goae.models import ops
from goae.models.afa import AFA
from goae.models.encoder import CrossAttention
from goae.pipeline import GOAEPipeline

FIELDS = ("ws", "planes", "image", "image_raw", "image_depth", "mask")


@pytest.fixture(scope="module")
def pipe():
    return GOAEPipeline.from_preset("small", 0)


@pytest.fixture(scope="module")
def photo():
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 512, 512, generator=g) * 2 - 1, camera_label(0.1, -0.05)


@pytest.fixture(scope="module")
def ref(pipe, photo):
    pipe.disable_fast_path()
    return pipe(*photo)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / ((a.double() - b.double()) ** 2).mean().item())


def test_channels_last_matches_nchw(pipe, photo, ref):
    pipe.enable_fast_path("fp32", channels_last=False)
    try:
        assert pipe.fast_path == fast.FastPath("fp32", channels_last=False, compile=False, device_type="cpu")
        out = pipe(*photo)
    finally:
        pipe.disable_fast_path()
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), getattr(ref, k), atol=1e-4, rtol=1e-5, msg=k)


def test_bf16_close_to_fp32_and_float32_outputs(pipe, photo, ref):
    pipe.enable_fast_path("bf16")
    try:
        assert pipe.fast_path.precision == "bf16" and pipe.fast_path.dtype == torch.bfloat16
        out = pipe(*photo)
        view = pipe.render_view(out, camera_label(0.3, 0.0))
        edited = pipe.edit(out, torch.full((pipe.generator.num_ws, pipe.generator.w_dim), 0.05))
    finally:
        pipe.disable_fast_path()
    for k in FIELDS:
        assert getattr(out, k).dtype == torch.float32, k
    assert all(v.dtype == torch.float32 for v in out.edit_features.values())
    assert all(v.dtype == torch.float32 for k, v in view.items() if k != "images")
    assert edited.image.dtype == torch.float32 and edited.planes.dtype == torch.float32
    assert (out.ws - ref.ws).abs().max() <= 0.1
    assert psnr(out.image, ref.image) >= 30, psnr(out.image, ref.image)
    assert (out.image - ref.image).abs().max() <= 0.25
    # Still a different computation: bf16 really ran.
    assert not torch.equal(out.image, ref.image)


def test_disable_restores_exact_fp32(pipe, photo, ref):
    pipe.enable_fast_path("bf16", channels_last=False)
    pipe.disable_fast_path()
    assert pipe.fast_path is None
    out = pipe(*photo)
    for k in FIELDS:
        assert torch.equal(getattr(out, k), getattr(ref, k)), k


def test_reduced_weights_give_identical_outputs_and_refuse_fp32(photo, tmp_path):
    """keep_fp32_weights=False stores what autocast casts anyway: the same outputs, bit for bit, half the
    bytes for those weights; the fp32 path, a save and an fp32-weight fast path are then refused."""
    kept, reduced = (GOAEPipeline.from_preset("small", 0) for _ in range(2))
    kept.enable_fast_path("bf16", keep_fp32_weights=True)
    before = sum(p.numel() * p.element_size() for p in fast.reducible_parameters(reduced).values())
    reduced.enable_fast_path("bf16", keep_fp32_weights=False)
    params = fast.reducible_parameters(reduced)
    assert {p.dtype for p in params.values()} == {torch.bfloat16}
    assert sum(p.numel() * p.element_size() for p in params.values()) * 2 == before
    # what must stay fp32 does: norms, the position-bias MLP, the generator, AFA's scaled convolutions
    assert not any("cpb_mlp" in k or "norm" in k for k in params)
    assert all(p.dtype == torch.float32 for p in reduced.generator.parameters())
    assert reduced.afa.output_layer[0].weight.dtype == torch.float32
    a, b = kept(*photo), reduced(*photo)
    for k in FIELDS:
        assert torch.equal(getattr(a, k), getattr(b, k)), k
    va = kept.render_view(a, camera_label(0.3, 0.0), planes=a.planes, ws=a.ws)
    vb = reduced.render_view(b, camera_label(0.3, 0.0), planes=b.planes, ws=b.ws)
    assert torch.equal(va.image, vb.image)

    for undo in (reduced.disable_fast_path, lambda: reduced.to(torch.float32),
                 lambda: reduced.enable_fast_path("bf16", keep_fp32_weights=True),
                 lambda: reduced.save_pretrained(tmp_path / "saved")):
        with pytest.raises(fast.FastPathError, match="load the pipeline again|lose precision"):
            undo()
    assert not (tmp_path / "saved").exists()
    assert reduced.fast_path.fp32_weights is False and fast.stored_weights_dtype(reduced) == torch.bfloat16
    reduced.to(torch.bfloat16)  # the same fast path again is fine, and keeps the stored weights
    assert reduced.fast_path.fp32_weights is False
    # the default keeps fp32 masters: the parity path comes back exactly
    kept.disable_fast_path()
    assert fast.stored_weights_dtype(kept) == torch.float32
    # an fp32 "fast path" has nothing to reduce: it says so, and the parity path stays reachable
    kept.enable_fast_path("fp32", keep_fp32_weights=False)
    assert kept.fast_path.fp32_weights is True and fast.stored_weights_dtype(kept) == torch.float32
    kept.disable_fast_path()


def test_preview_resolution_shapes(pipe, ref):
    native = pipe.generator.neural_rendering_resolution
    full = pipe.render_view(ref, camera_label(0.2, 0.0))
    prev = pipe.render_view(ref, camera_label(0.2, 0.0), neural_rendering_resolution=native // 2)
    assert full["image_raw"].shape[-1] == native  # never a preview unless asked
    assert prev["image_raw"].shape[-2:] == (native // 2, native // 2)
    assert prev["image_depth"].shape[-2:] == (native // 2, native // 2)
    assert prev["image"].shape == full["image"].shape == (1, 3, 512, 512)


def test_batched_views_equal_each_view_alone(pipe, ref):
    """On a CPU render_view / pipe() render a batch one image at a time: bit-identical to each alone."""
    cams = torch.cat([camera_label(0.3, 0.0), camera_label(-0.4, 0.1), camera_label(0.0, -0.2)])
    batch = pipe.render_view(ref, cams)
    for i in range(3):
        alone = pipe.render_view(ref, cams[i])
        for k in ("image", "image_raw", "image_depth", "feature_image", "weights_sum", "ray_directions"):
            assert torch.equal(batch[k][i:i + 1], alone[k]), k
    with torch.no_grad():
        depth_only = pipe.method.render(ref.planes.expand(3, -1, -1, -1), ref.ws.expand(3, -1, -1), cams,
                                        superresolution=False, features=False)
    assert set(depth_only.keys()) == {"image_depth", "weights_sum", "ray_origins", "ray_directions"}
    torch.testing.assert_close(depth_only["image_depth"], batch["image_depth"], atol=1e-5, rtol=0)


def _sr_and_planes(g, ws, feats):
    """Backbone tri-planes and super-resolution of fixed low-res features (the two fp32 conv stacks)."""
    planes = g.synthesize_from(ws, *g.synthesize_until(ws))
    image = g.superresolution(feats[:, :3], feats, ws, noise_mode="none")
    return planes, image


def test_gradients_through_fp32_backbone_and_sr(pipe, ref):
    """Training backpropagates through the frozen generator: the in-place fast code must step aside."""
    g = pipe.generator
    feats = torch.randn(1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    ws = ref.ws.clone().requires_grad_(True)
    with torch.enable_grad():
        planes, image = _sr_and_planes(g, ws, feats)
        grad, = torch.autograd.grad(image.square().mean() + planes.square().mean(), ws)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    with torch.no_grad():  # the no-grad (in-place) forward computes the same numbers
        planes0, image0 = _sr_and_planes(g, ref.ws, feats)
    assert torch.equal(planes0, planes.detach()) and torch.equal(image0, image.detach())
    # NCHW gives the same gradient (channels-last is a layout, not a different function).
    blocks = [m for m in g.modules() if hasattr(m, "channels_last")]
    for b in blocks:
        b.channels_last = False
    try:
        with torch.enable_grad():
            planes2, image2 = _sr_and_planes(g, ws, feats)
            grad2, = torch.autograd.grad(image2.square().mean() + planes2.square().mean(), ws)
    finally:
        for b in blocks:
            b.channels_last = None
    torch.testing.assert_close(grad2, grad, atol=1e-6, rtol=1e-3)


@pytest.mark.parametrize("act", sorted(ops.ACTIVATIONS))
def test_bias_act_inplace_equals_out_of_place(act):
    x = torch.randn(2, 5, 7, 3)
    b = torch.randn(5)
    want = ops.bias_act(x, b, act=act, gain=1.3, clamp=0.8)
    y = x.clone()
    got = ops.bias_act(y, b, act=act, gain=1.3, clamp=0.8, inplace=True)
    assert torch.equal(got, want)
    # A tensor autograd tracks is never overwritten.
    z = x.clone().requires_grad_(True)
    out = ops.bias_act(z, b, act=act, inplace=True)
    assert out is not z and torch.equal(z.detach(), x)


@pytest.mark.parametrize("up,down,padding,taps", [
    (1, 1, [1, 1, 1, 1], [1, 3, 3, 1]),       # symmetric: padding inside the conv
    (1, 2, [1, 1, 1, 1], [1, 3, 3, 1]),       # downsampling via conv stride
    (2, 1, [2, 1, 2, 1], [1, 3, 3, 1]),       # zero insertion + asymmetric pad
    (1, 1, [-1, 2, 1, -2], [1, 2, 3, 4]),     # crop
    (2, 2, [3, 3, 3, 3], list(range(1, 9))),  # separable 8-tap filter
])
def test_upfirdn2d_matches_direct_definition(up, down, padding, taps):
    x = torch.randn(2, 3, 9, 10, dtype=torch.float64)
    f = ops.setup_filter(taps).double()
    got = ops.upfirdn2d(x, f, up=up, down=down, padding=padding, gain=2.0)
    # Direct definition in float64: zero insertion, pad / crop, true 2-D convolution, subsample.
    f2 = torch.outer(f, f) if f.ndim == 1 else f
    n, c, h, w = x.shape
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    px0, px1, py0, py1 = padding
    z = F.pad(z, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    z = z[:, :, max(-py0, 0): z.shape[2] - max(-py1, 0), max(-px0, 0): z.shape[3] - max(-px1, 0)]
    k = (f2 * 2.0).flip([0, 1])[None, None].repeat(c, 1, 1, 1)
    want = F.conv2d(z, k, groups=c)[:, :, ::down, ::down]
    torch.testing.assert_close(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batched_modulated_conv_equals_each_sample_alone(up, down, channels_last):
    """On a CPU a batch runs one convolution per sample (oneDNN's grouped form is ~1.6x slower per
    sample): bit-identical to each sample alone, and equal to the official grouped form to rounding."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 10, 10, generator=g)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight, styles, noise = torch.randn(5, 6, 3, 3, generator=g), torch.randn(3, 6, generator=g), torch.randn(1, 1, 1, 1)
    f = ops.setup_filter([1, 3, 3, 1])
    kw = dict(up=up, down=down, padding=1, resample_filter=f)
    got = ops.modulated_conv2d(x, weight, styles, **kw)
    alone = torch.cat([ops.modulated_conv2d(x[i:i + 1], weight, styles[i:i + 1], **kw) for i in range(3)])
    assert torch.equal(got, alone)
    # The official fused form: the batch folded into channels, one grouped convolution.
    w = weight[None] * styles[:, None, :, None, None]
    w = w * (w.square().sum(dim=[2, 3, 4], keepdim=True) + 1e-8).rsqrt()
    grouped = ops.conv2d_resample(x.reshape(1, -1, 10, 10), w.reshape(-1, 6, 3, 3), f=f, up=up, down=down,
                                  padding=1, groups=3)
    torch.testing.assert_close(got, grouped.reshape(3, 5, *grouped.shape[2:]), atol=1e-5, rtol=1e-5)
    # With noise, and under autograd (training runs this path too).
    xg = x.clone().requires_grad_(True)
    out = ops.modulated_conv2d(xg, weight, styles, noise=noise, **kw)
    torch.testing.assert_close(out, got + noise, atol=1e-6, rtol=0)
    out.square().sum().backward()
    assert xg.grad is not None and torch.isfinite(xg.grad).all()


def test_channels_last_layout_reaches_the_convolutions():
    """n == 1 batch folding must not hide the NHWC layout (the speed-up relies on it)."""
    x = torch.randn(1, 8, 12, 12).contiguous(memory_format=torch.channels_last)
    w, s = torch.randn(16, 8, 3, 3), torch.randn(1, 8)
    y = ops.modulated_conv2d(x, w, s, up=2, padding=1, resample_filter=ops.setup_filter([1, 3, 3, 1]),
                             flip_weight=False)
    assert y.is_contiguous(memory_format=torch.channels_last)
    y_ref = ops.modulated_conv2d(x.contiguous(), w, s, up=2, padding=1,
                                 resample_filter=ops.setup_filter([1, 3, 3, 1]), flip_weight=False)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("channels_last, nhwc", [(None, True), (False, False)])
def test_afa_layout_follows_memory_format_for(channels_last, nhwc):
    """AFA's residual CNN runs in the layout goae.fast.memory_format_for gives (NHWC on a CPU unless refused);
    the outputs agree across layouts to fp32 rounding, and `features` comes back plain NCHW."""
    torch.manual_seed(0)
    afa = AFA(stage_channels=(16, 16, 32), units_per_stage=1, feature_channels=32, feature_resolution=8,
              num_heads=2).eval()
    seen = []
    afa.input_layer[0].register_forward_pre_hook(
        lambda m, a: seen.append(a[0].is_contiguous(memory_format=torch.channels_last) and not a[0].is_contiguous()))
    x, rec, tri = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        afa.channels_last = channels_last
        out = afa(x, rec, tri)
        afa.channels_last = False if channels_last is None else None
        other = afa(x, rec, tri)
    assert fast.memory_format_for(channels_last, "cpu") == (torch.channels_last if nhwc else torch.contiguous_format)
    assert seen == [nhwc, not nhwc]
    assert out["features"].is_contiguous() and out["features"].shape == (2, 32, 8, 8)
    for k in out:
        torch.testing.assert_close(out[k], other[k], atol=1e-5, rtol=1e-5)


def test_cross_attention_equals_packed_key_value_projection():
    """CrossAttention hands MHA its values as their own tensor (k and v projected apart, no packed copy):
    the same result as MHA's packed key/value projection of one memory tensor."""
    torch.manual_seed(0)
    ca = CrossAttention(32, 4, 64).eval()
    q, kv = torch.randn(2, 5, 32), torch.randn(2, 40, 32)
    with torch.no_grad():
        got = ca(q, kv)
        mem = kv.transpose(0, 1).contiguous()
        att = ca.multihead_attn(q.transpose(0, 1).contiguous(), mem, mem, need_weights=False)[0].transpose(0, 1)
        t = ca.norm2(q + att)
        want = t + ca.linear2(torch.relu(ca.linear1(t)))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def test_precision_resolution_and_errors(pipe):
    auto = fast.resolve_precision("auto", "cpu")
    assert auto == ("bf16" if fast.has_fast_bf16("cpu") else "fp32")
    assert fast.resolve_precision("fp32", "cpu") == "fp32"
    with pytest.raises(fast.FastPathError, match="precision must be one of"):
        pipe.enable_fast_path("int8")
    with pytest.raises(fast.FastPathError, match="fp16"):
        fast.resolve_precision("fp16", "cpu")
    assert pipe.fast_path is None
    assert pipe.enable_fast_path("fp32") is pipe and pipe.fast_path.autocast is not None
    pipe.disable_fast_path()


@pytest.mark.parametrize("capability,want", [((6, 1), "fp16"), ((7, 0), "fp16"), ((7, 5), "fp16"),
                                             ((8, 0), "bf16"), ((8, 9), "bf16"), ((9, 0), "bf16")])
def test_auto_precision_follows_the_gpu_compute_capability(monkeypatch, capability, want):
    """bf16 on Ampere and later (8.0+), fp16 below: T4 (7.5) and V100 (7.0) report bf16 support, by
    emulation, with slow bf16 convolutions. No GPU here: the CUDA queries are faked."""
    asked = []

    def get_device_capability(device=None):
        asked.append(device)
        return capability
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)   # what T4 / V100 answer too
    monkeypatch.setattr(torch.cuda, "get_device_capability", get_device_capability)
    assert fast.resolve_precision("auto", "cuda") == want
    assert fast.resolve_precision("auto", "cuda:1") == want
    assert torch.device(asked[-1]).index == 1   # the capability of the device asked about
    assert fast.has_fast_bf16("cuda") == (want == "bf16")
    assert fast.resolve_precision("fp32", "cuda") == "fp32" and fast.resolve_precision("fp16", "cuda") == "fp16"


def test_auto_precision_on_cpus_is_unchanged(monkeypatch):
    """CPUs: bf16 only with native bf16 instructions (AVX512-BF16 or AMX), else fp32; never fp16."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # a GPU beside the CPU changes nothing
    for flags, want in (({"avx512_bf16"}, "bf16"), ({"amx_bf16", "avx512f"}, "bf16"), ({"avx2", "avx512f"}, "fp32"),
                        (set(), "fp32")):
        monkeypatch.setattr(fast, "_cpu_flags", lambda flags=flags: set(flags))
        assert fast.resolve_precision("auto", "cpu") == want


def test_compile_needs_a_cpp_compiler(pipe, monkeypatch):
    monkeypatch.setattr(fast.shutil, "which", lambda name: None)
    with pytest.raises(fast.FastPathError, match="C\\+\\+ compiler"):
        pipe.enable_fast_path("fp32", compile=True)
    pipe.disable_fast_path()
    assert pipe.generator.superresolution._compiled_call_impl is None


@pytest.mark.slow
def test_compile_small_render(pipe, ref):
    """compile=True on the small pipeline's render path (render_view runs the compiled renderer and
    super-resolution). Inductor builds C++ here."""
    cam = camera_label(0.2, 0.0)
    want = pipe.render_view(ref, cam)["image"]
    pipe.enable_fast_path("fp32", compile=True)
    try:
        got = pipe.render_view(ref, cam)["image"]
    finally:
        pipe.disable_fast_path()
    assert pipe.generator.superresolution._compiled_call_impl is None
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compile_runs_every_hot_module(pipe, ref, photo):
    """Every module compile=True compiles is really called through its compiled form by the forward
    (dynamo captures a frame for each), with the same result. The 'aot_eager' backend traces exactly
    what inductor would, without generating C++ (seconds, not minutes)."""
    import torch._dynamo

    names = fast.compiled_modules(pipe)
    assert {"encoder", "renderer", "superresolution", "afa"} <= set(names) and any(n.startswith("synthesis.b") for n in names)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    pipe.enable_fast_path("fp32", compile="aot_eager")
    seen = set()
    for name, module in names.items():  # nn.Module.__call__ runs _compiled_call_impl when it is set
        compiled = module._compiled_call_impl
        assert compiled is not None, name
        module._compiled_call_impl = lambda *a, _c=compiled, _n=name, **k: (seen.add(_n), _c(*a, **k))[1]
    try:
        got = pipe(*photo)
        view = pipe.render_view(got, camera_label(0.2, 0.0))
    finally:
        pipe.disable_fast_path()
    assert seen == set(names), set(names) - seen
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= len(names)
    torch.testing.assert_close(got.image, ref.image, atol=1e-4, rtol=1e-4)
    want = pipe.render_view(ref, camera_label(0.2, 0.0))
    torch.testing.assert_close(view.image, want.image, atol=1e-4, rtol=1e-4)


_FAULTS_SCRIPT = """
import resource, sys, torch
from goae.runtime import tune_cpu_allocator
tuned = tune_cpu_allocator() if sys.argv[1] == "1" else False
torch.set_num_threads(1)
conv = torch.nn.Conv2d(32, 32, 3, padding=1)
x = torch.randn(1, 32, 256, 256)  # 8 MB activations, like the renderer's and super-resolution's
def step():
    with torch.no_grad():
        y = x
        for _ in range(4):
            y = torch.nn.functional.leaky_relu(conv(y) + 1)
        return y
first = step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    assert torch.equal(step(), first)
print(tuned, (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 3)
"""


@pytest.mark.skipif(not runtime.tune_cpu_allocator(False), reason="glibc only (mallopt)")
def test_tuned_allocator_stops_refaulting_render_buffers():
    """Fresh processes: with glibc's defaults a call often page-faults its big buffers in again; tuned, the
    heap keeps them mapped (the ~15% CPU win the benchmarks show), with identical results."""
    import subprocess
    import sys

    def faults(tuned: bool) -> tuple[str, float]:
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, "1" if tuned else "0"], check=True,
                             capture_output=True, text=True).stdout.split()
        return out[0], float(out[1])

    # glibc's defaults vary with its dynamic mmap/trim thresholds (17-19 thousand faults per call on quiet runs,
    # 2-5 thousand on others), so the bound is on the tuned heap alone: at most one of the four 8 MB buffers
    # (2048 pages) is faulted in again per call (measured 4-2050), in each of three fresh processes. Untuned
    # runs mostly fault all four in again, so this fails when the tuning does not take.
    (flag_default, default), tuned = faults(False), [faults(True) for _ in range(3)]
    assert flag_default == "False" and {flag for flag, _ in tuned} == {"True"}
    assert all(n < 4096 for _, n in tuned), (tuned, default)


def test_allocator_tuning_can_be_undone():
    if not runtime.tune_cpu_allocator(True):
        pytest.skip("glibc only (mallopt)")
    assert runtime.tune_cpu_allocator(False)  # back to glibc's defaults for the rest of the suite
