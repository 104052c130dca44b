"""The fused renderer (goae.models.renderer_fused, the default) against the reference renderer.

The reference path is the official op order and is checked against the official goldens in
test_renderer.py / test_parity_eg3d.py; here the fast path must reproduce it up to float rounding on
random tri-planes and cameras, with gradients and under bf16 autocast.
"""
import math

import pytest
import torch

from goae import camera
from goae.models.eg3d import OSGDecoder
from goae.models.renderer import RaySampler, generate_planes, sample_from_planes
from goae.models.renderer_fused import FusedImportanceRenderer, TriplaneTaps

TOL = 2e-5  # fast vs reference, fp32 (features in [-1, 1], depths ~2.5)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
OPTIONS = dict(ray_start=2.25, ray_end=3.3, box_warp=1.0, depth_resolution=12, depth_resolution_importance=12,
               clamp_mode="softplus", disparity_space_sampling=False)


def make_decoder(device="cpu", seed=0):
    """OSGDecoder with random weights whose density output is sharpened so the volume has surfaces."""
    torch.manual_seed(seed)
    decoder = OSGDecoder(32, {"decoder_lr_mul": 1.0, "decoder_output_dim": 32})
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
        decoder.net[2].weight[0] *= 8
        decoder.net[2].bias[0] = 0.0  # ~85% of the test rays reach opacity 0.5
    return decoder.to(device)


def make_scene(n=2, res=8, device="cpu", seed=1):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(n, 3, 32, 32, 32, generator=g).to(device)
    yaw = torch.tensor([0.0, 0.4, -0.6, 0.2][:n])
    c = camera.camera_label(yaw, torch.tensor([0.0, -0.1, 0.2, 0.05][:n]))
    cam2world, intrinsics = c[:, :16].reshape(-1, 4, 4).to(device), c[:, 16:25].reshape(-1, 3, 3).to(device)
    ray_origins, ray_directions = RaySampler()(cam2world, intrinsics, res)
    return planes, ray_origins, ray_directions


def render(planes, decoder, ray_origins, ray_directions, options, fast, seed=None, **kw):
    if seed is not None:
        torch.manual_seed(seed)
    return FusedImportanceRenderer(fused=fast, **kw)(planes, decoder, ray_origins, ray_directions, options,
                                                     deterministic=seed is None)


def max_diff(a, b):
    return max((x.double() - y.double()).abs().max().item() for x, y in zip(a, b))


@pytest.mark.parametrize("box_warp", [1.0, 1.6])
def test_taps_equal_grid_sample_summed_over_planes(box_warp):
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 8, 10, 14, generator=g)  # H != W
    points = (torch.rand(2, 500, 3, generator=g) - 0.5) * 1.4 * box_warp  # some outside the box
    points[0, :3] = torch.tensor([[0.5, 0.5, 0.5], [-0.5, 0.0, 0.49], [10.0, -3.0, 0.1]]) * box_warp
    want = sample_from_planes(generate_planes(), planes, points, box_warp).sum(1).reshape(-1, 8)
    got = TriplaneTaps(planes, generate_planes(), box_warp)(points)
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-5
    assert (points.abs() > 0.5 * box_warp + 0.2).any()  # the zero padding was exercised


def test_decode_plane_sum_equals_forward():
    decoder = make_decoder()
    feats = torch.randn(2, 3, 300, 32) * 3
    want = decoder(feats, None)
    sigma, rgb = decoder.decode_plane_sum(feats.sum(1).reshape(-1, 32), 3)
    assert (sigma.reshape(2, 300, 1) - want["sigma"]).abs().max() <= 1e-5 * max(1, want["sigma"].abs().max())
    assert (rgb.reshape(2, 300, 32) - want["rgb"]).abs().max() <= 1e-6


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("variant", ["default", "batch1", "auto_limits", "disparity", "no_importance", "white_back"])
def test_fast_equals_reference_deterministic(device, variant):
    n = 1 if variant == "batch1" else 2
    options = dict(OPTIONS)
    if variant == "auto_limits":
        options.update(ray_start="auto", ray_end="auto")
    elif variant == "disparity":
        options.update(disparity_space_sampling=True)
    elif variant == "no_importance":
        options.update(depth_resolution_importance=0)
    elif variant == "white_back":
        options.update(white_back=True)
    decoder = make_decoder(device)
    planes, ray_origins, ray_directions = make_scene(n, device=device)
    with torch.no_grad():
        ref = render(planes, decoder, ray_origins, ray_directions, options, fast=False)
        fast = render(planes, decoder, ray_origins, ray_directions, options, fast=True, chunk_points=100)
    assert [tuple(t.shape) for t in fast] == [tuple(t.shape) for t in ref] == [(n, 64, 32), (n, 64, 1), (n, 64, 1)]
    assert max_diff(fast, ref) <= TOL
    opacity = ref[2]
    assert (opacity > 0.5).any() and (opacity < 0.5).any()  # surfaces and (nearly) empty rays


def test_chunk_size_does_not_change_the_result():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    with torch.no_grad():
        one = render(planes, decoder, ray_origins, ray_directions, OPTIONS, fast=True, chunk_points=1 << 20)
        many = render(planes, decoder, ray_origins, ray_directions, OPTIONS, fast=True, chunk_points=37)
    assert max_diff(one, many) <= 1e-6


def test_fast_trace_matches_reference_trace():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    traces = []
    for fast in (False, True):
        trace = {}
        with torch.no_grad():
            FusedImportanceRenderer(fused=fast)(planes, decoder, ray_origins, ray_directions, OPTIONS,
                                                deterministic=True, trace=trace)
        traces.append(trace)
    ref, fast = traces
    assert sorted(fast) == sorted(ref)
    for key in ref:
        assert fast[key].shape == ref[key].shape, key
        assert (fast[key] - ref[key]).abs().max() <= TOL * max(1, ref[key].abs().max().item()), key


@pytest.mark.parametrize("density_noise", [0.0, 0.5])
def test_random_mode_consumes_the_same_random_numbers(density_noise):
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    options = dict(OPTIONS, density_noise=density_noise)
    with torch.no_grad():
        ref = render(planes, decoder, ray_origins, ray_directions, options, fast=False, seed=5)
        fast = render(planes, decoder, ray_origins, ray_directions, options, fast=True, seed=5)
        other = render(planes, decoder, ray_origins, ray_directions, options, fast=True, seed=6)
    assert max_diff(fast, ref) <= TOL
    assert max_diff(fast, other) > 1e-3  # really random


def test_gradients_match_reference():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    g = torch.Generator().manual_seed(3)
    probes = [torch.randn(2, 64, 32, generator=g), torch.randn(2, 64, 1, generator=g),
              torch.randn(2, 64, 1, generator=g)]
    grads = []
    for fast in (False, True):
        p = planes.clone().requires_grad_(True)
        decoder.zero_grad()
        out = render(p, decoder, ray_origins, ray_directions, OPTIONS, fast=fast)
        sum((o * w).sum() for o, w in zip(out, probes)).backward()
        grads.append([p.grad] + [q.grad.clone() for q in decoder.parameters()])
    for ref, fast in zip(*grads):
        scale = ref.abs().max().item()
        assert scale > 0 and (fast - ref).abs().max().item() <= 1e-4 * max(1.0, scale)


def test_bf16_autocast_stays_close_and_returns_float32():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    with torch.no_grad():
        ref = render(planes, decoder, ray_origins, ray_directions, OPTIONS, fast=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = render(planes, decoder, ray_origins, ray_directions, OPTIONS, fast=True)
    assert all(t.dtype == torch.float32 for t in low)
    features, depth, opacity = ((a - b).abs() for a, b in zip(low, ref))
    # bf16 decoder MLP (8-bit mantissa) with fp32 depths, importance sampling and marching.
    # Measured: features max 8e-3 / mean 1.4e-3, depth mean 5e-4, opacity mean 1.9e-3.
    assert features.mean() <= 5e-3 and features.max() <= 0.05
    assert depth.mean() <= 3e-3 and opacity.mean() <= 6e-3
    assert features.max() > 0  # the MLP really ran in bf16


def test_fast_is_the_default_and_falls_back_for_plain_decoders():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(1)
    renderer = FusedImportanceRenderer()
    assert renderer.fused
    calls = []

    def plain(features, directions):  # the decoder protocol only: the renderer must use the reference path
        calls.append(features.shape)
        return decoder(features, directions)
    with torch.no_grad():
        out = renderer(planes, plain, ray_origins, ray_directions, OPTIONS, deterministic=True)
        fast = renderer(planes, decoder, ray_origins, ray_directions, OPTIONS, deterministic=True)
    assert len(calls) == 2 and max_diff(out, fast) <= TOL
    assert math.isfinite(out[1].sum().item())


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("variant", ["default", "no_importance"])
def test_depth_only_render_gives_the_same_depth(fast, variant):
    """features=False (the occlusion mask's render) decodes only sigma on the fast path: same depth and
    opacity as the full render (bit-identical on CPU), no features."""
    options = dict(OPTIONS, depth_resolution_importance=0) if variant == "no_importance" else OPTIONS
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(2)
    renderer = FusedImportanceRenderer(fused=fast, chunk_points=300)
    with torch.no_grad():
        full = renderer(planes, decoder, ray_origins, ray_directions, options, deterministic=True)
        trace = {}
        depth_only = renderer(planes, decoder, ray_origins, ray_directions, options, deterministic=True,
                              features=False, trace=trace)
    assert depth_only[0] is None
    assert (depth_only[1] - full[1]).abs().max() <= 1e-6 and (depth_only[2] - full[2]).abs().max() <= 1e-6
    assert "weights_final" in trace and (full[2] > 0.5).any()


def test_depth_only_decoder_sigma_is_the_full_sigma():
    decoder = make_decoder()
    x = torch.randn(1000, 32) * 3
    with torch.no_grad():
        sigma, rgb = decoder.decode_plane_sum(x, 3)
        sigma_only, none = decoder.decode_plane_sum(x, 3, features=False)
    assert none is None and rgb.shape == (1000, 32)
    assert (sigma_only - sigma).abs().max() <= 1e-5 * sigma.abs().max()


def test_depth_only_with_gradients():
    decoder = make_decoder()
    planes, ray_origins, ray_directions = make_scene(1)
    p = planes.clone().requires_grad_(True)
    _, depth, opacity = FusedImportanceRenderer()(p, decoder, ray_origins, ray_directions, OPTIONS, deterministic=True,
                                             features=False)
    with torch.no_grad():
        _, want, _ = render(planes, decoder, ray_origins, ray_directions, OPTIONS, fast=True)
    (depth.sum() + opacity.sum()).backward()
    assert p.grad.abs().max() > 0 and (depth - want).abs().max() <= 1e-6


def test_render_planes_depth_only():
    from goae.models.eg3d import EG3DGenerator
    rk = {"superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC", "sr_antialias": True,
          "ray_start": 2.25, "ray_end": 3.3, "box_warp": 1, "depth_resolution": 6, "depth_resolution_importance": 6,
          "c_gen_conditioning_zero": False, "c_scale": 1.0, "superresolution_noise_mode": "none",
          "clamp_mode": "softplus"}
    torch.manual_seed(0)
    G = EG3DGenerator(z_dim=32, c_dim=25, w_dim=32, img_resolution=512, img_channels=3, sr_num_fp16_res=0,
                      mapping_kwargs={"num_layers": 2}, rendering_kwargs=rk,
                      synthesis_kwargs={"channel_base": 256, "channel_max": 8, "num_fp16_res": 0, "conv_clamp": None},
                      neural_rendering_resolution=8, sr_channels=[16, 8]).eval()
    planes = torch.randn(1, 96, 32, 32)
    ws, c = torch.randn(1, G.num_ws, 32), camera.camera_label(0.3, -0.1)
    with torch.no_grad():
        full = G.render_planes(planes, ws, c, deterministic=True, superresolution=False)
        depth_only = G.render_planes(planes, ws, c, deterministic=True, superresolution=False, features=False)
        with pytest.raises(ValueError, match="superresolution=False"):
            G.render_planes(planes, ws, c, features=False)
    assert sorted(depth_only) == ["image_depth", "ray_directions", "ray_origins", "weights_sum"]
    for key in depth_only:
        assert depth_only[key].shape == full[key].shape
        assert (depth_only[key] - full[key]).abs().max() <= 1e-6, key


def _count_ops(fn) -> int:
    """aten operators dispatched by fn(): on a GPU each is (at least) one kernel launch."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))
    with Count():
        fn()
    return Count.n


def test_gpu_chunk_size_launches_do_not_grow_with_the_batch():
    """The PyTorch fused path at the chunk size a GPU gets (64^2 rays x 48+48 samples): one chunk per pass whatever the batch,
    against dozens of cache-sized chunks on a CPU (ops counted on the CPU, kernel off)."""
    from goae.models.renderer_fused import CPU_CHUNK_POINTS, CUDA_CHUNK_POINTS

    decoder = make_decoder()
    options = dict(OPTIONS, depth_resolution=48, depth_resolution_importance=48)
    counts = {}
    for n in (1, 4):
        planes, ray_origins, ray_directions = make_scene(n, res=64)
        for name, chunk in (("cpu", CPU_CHUNK_POINTS), ("gpu", CUDA_CHUNK_POINTS)):
            r = FusedImportanceRenderer(chunk_points=chunk, kernels=False)
            with torch.no_grad():
                counts[name, n] = _count_ops(lambda: r(planes, decoder, ray_origins, ray_directions, options,
                                                       deterministic=True))
    assert counts["gpu", 4] <= counts["gpu", 1] + 16, counts  # + the batch offsets of the taps
    assert counts["cpu", 4] > 4 * counts["gpu", 4] and counts["cpu", 4] > 2 * counts["cpu", 1], counts
