"""The fused C++ render kernel (goae/models/kernels.py) against the renderer's PyTorch fast path.

The kernel is built on first use (once per machine, cached); where it cannot be built the renderer
must silently keep the PyTorch path, which the fallback tests check without a compiler."""
import logging

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
