"""The speed-ups of issue #30 against their plain definitions (fp32), on small models.

- Swin-V2: the cached continuous position bias equals the live one, follows weight changes, and lets
  gradients through in training; the one-gather window permutation + fused attention equal roll /
  partition / explicit softmax attention to fp32 rounding (1e-5; the goldens in test_parity_goae.py
  check the whole encoder).
- Super-resolution: the last block computed in strips of rows equals the whole-image block.
"""
from __future__ import annotations

import math

import numpy as np

import pytest
import torch
import torch.nn.functional as F

from goae.models import swin_v2
from goae.models.swin_v2 import SwinTransformerBlock, SwinTransformerV2, WindowAttention


def reference_attention(attn: WindowAttention, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Swin-V2 window attention written out as the paper and the official code define it."""
    Bw, N, C = x.shape
    H = attn.num_heads
    bias = torch.cat((attn.q_bias, torch.zeros_like(attn.v_bias), attn.v_bias))
    q, k, v = F.linear(x, attn.qkv.weight, bias).reshape(Bw, N, 3, H, -1).permute(2, 0, 3, 1, 4)
    logits = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
    logits = logits * torch.clamp(attn.logit_scale, max=math.log(100.0)).exp()
    table = attn.cpb_mlp(attn.relative_coords_table).view(-1, H)
    pos = table[attn.relative_position_index.view(-1)].view(N, N, -1).permute(2, 0, 1)
    logits = logits + 16 * torch.sigmoid(pos).unsqueeze(0)
    if mask is not None:
        nW = mask.shape[0]
        logits = (logits.view(Bw // nW, nW, H, N, N) + mask.unsqueeze(1).unsqueeze(0)).view(-1, H, N, N)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(Bw, N, C)
    return attn.proj(out)


def reference_block(blk: SwinTransformerBlock, x: torch.Tensor) -> torch.Tensor:
    H, W = blk.input_resolution
    B, L, C = x.shape
    h = x.view(B, H, W, C)
    if blk.shift:
        h = torch.roll(h, shifts=(-blk.shift, -blk.shift), dims=(1, 2))
    h = reference_attention(blk.attn, swin_v2.window_partition(h, blk.window), blk.attn_mask)
    h = swin_v2.window_reverse(h, blk.window, H, W)
    if blk.shift:
        h = torch.roll(h, shifts=(blk.shift, blk.shift), dims=(1, 2))
    x = x + blk.norm1(h.reshape(B, L, C))
    return x + blk.norm2(blk.mlp(x))


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights away from the init (post-norms start at zero, which would hide the attention)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)


@pytest.mark.parametrize("shift", [0, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_swin_block_equals_roll_partition_and_explicit_attention(shift, batch):
    torch.manual_seed(0)
    blk = SwinTransformerBlock(32, (8, 8), num_heads=4, window=4, shift=shift, pretrained_window=3).eval()
    randomise(blk)
    assert blk.window_order is not None  # 4 windows: a permutation even without a shift
    x = torch.randn(batch, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), reference_block(blk, x), atol=1e-5, rtol=1e-5)


def test_one_window_needs_no_permutation():
    blk = SwinTransformerBlock(16, (4, 4), num_heads=2, window=8, shift=4).eval()  # fits one window: no shift
    assert blk.window_order is None and blk.window_unorder is None and blk.attn_mask is None
    randomise(blk)
    x = torch.randn(2, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(blk(x), reference_block(blk, x), atol=1e-5, rtol=1e-5)


def test_position_bias_cached_and_follows_weight_changes():
    attn = WindowAttention(16, 4, 2, pretrained_window=3).eval()
    randomise(attn)
    calls = []
    attn.cpb_mlp.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        first = attn.position_bias()
        assert torch.equal(attn.position_bias(), first) and len(calls) == 1  # the MLP ran once
        attn.cpb_mlp[2].weight.mul_(-1.5)  # an in-place update (optimiser step, load_state_dict)
        changed = attn.position_bias()
    assert len(calls) == 2 and not torch.equal(changed, first)
    other = WindowAttention(16, 4, 2, pretrained_window=3).eval()
    other.load_state_dict(attn.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(other.position_bias(), changed, atol=0, rtol=0)
        attn.load_state_dict(WindowAttention(16, 4, 2, pretrained_window=3).state_dict())
        assert not torch.equal(attn.position_bias(), changed)  # load_state_dict invalidates it
        attn.to(torch.float64)
        assert attn.position_bias().dtype == torch.float64  # one entry per dtype


def test_position_bias_live_in_training_gradients_reach_cpb_mlp():
    torch.manual_seed(0)
    model = SwinTransformerV2(img_size=32, patch_size=2, embed_dim=16, depths=(1, 2, 1, 1), num_heads=(2, 2, 4, 4),
                              window_size=4, pretrained_window_sizes=(0, 0, 0, 0), drop_path_rate=0.0)
    randomise(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model.eval()
        cached = model(x)
    model.train()
    out = model(x)
    for a, b in zip(out, cached):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)  # cached or live: same to fp32 rounding
    sum(o.square().sum() for o in out).backward()
    grads = [blk.attn.cpb_mlp[0].weight.grad for layer in model.layers for blk in layer.blocks]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    # Eval mode with gradients on (fine-tuning a frozen-BN model) also stays live.
    model.eval().zero_grad()
    sum(o.square().sum() for o in model(x)).backward()
    assert model.layers[0].blocks[0].attn.cpb_mlp[0].weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------- super-resolution
@pytest.mark.parametrize("rows", [1, 5, 16, 1000])
def test_super_resolution_in_strips_equals_the_whole_image(rows, monkeypatch):
    """The last super-resolution block run `rows` input rows at a time (the working set of a strip) gives
    the whole-image pixels; one row of context fewer than STRIP_HALO changes the seams (the test bites)."""
    from goae.models.stylegan2 import SynthesisBlock
    from goae.pipeline import GOAEPipeline

    sr = GOAEPipeline.from_preset("small", 0).generator.superresolution
    g = torch.Generator().manual_seed(4)
    r = sr.input_resolution
    rgb, feats = torch.randn(2, 3, r, r, generator=g), 3 * torch.randn(2, 32, r, r, generator=g)
    ws = torch.randn(2, 14, sr.block1.w_dim, generator=g)
    with torch.no_grad():
        monkeypatch.setattr(sr, "strip_rows", None)
        whole = sr(rgb, feats, ws)
        monkeypatch.setattr(sr, "strip_rows", rows)
        strips = sr(rgb, feats, ws)
        # bit-identical here; the bound is the parity README's for images, as another CPU's convolutions
        # may sum a sub-image in another order
        torch.testing.assert_close(strips, whole, atol=5e-4, rtol=1e-5)
        if rows < sr.block1.resolution // 2:  # more than one strip: seams exist
            monkeypatch.setattr(SynthesisBlock, "STRIP_HALO", SynthesisBlock.STRIP_HALO - 1)
            assert (sr(rgb, feats, ws) - whole).abs().max() > 0.1
    # training (gradients on) and noise run the block whole, as before
    monkeypatch.setattr(SynthesisBlock, "image_in_strips", lambda *a, **k: pytest.fail("strips with gradients"))
    sr(rgb, feats, ws)


# ----------------------------------------------------------------------------------------- meshes
@pytest.fixture(scope="module")
def small_planes():
    from goae.camera import camera_label
    from goae.pipeline import GOAEPipeline

    pipe = GOAEPipeline.from_preset("small", 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        out = pipe(torch.rand(1, 3, 512, 512, generator=g) * 2 - 1, camera_label(0.2, 0.1))
    return pipe.generator, out.planes[:1]


def dense_mesh(generator, planes, resolution: int, level: float, border: float = 30 / 256):
    """The plain definition: every grid point decoded, the border forced empty, marching cubes."""
    from goae.export import density_grid, marching_cubes

    sigma = density_grid(generator, planes, resolution)
    pad = round(border * resolution)
    inside = np.zeros_like(sigma, dtype=bool)
    inside[pad:resolution - pad, pad:resolution - pad, pad:resolution - pad] = True
    sigma[~inside] = min(-1000.0, level - 1000.0)
    return marching_cubes(sigma, level, generator.box_warp / 2), sigma[inside]


@pytest.mark.parametrize("resolution", [48, 61])
def test_coarse_to_fine_mesh_is_the_dense_grid_surface(small_planes, resolution):
    from goae.export import extract_mesh

    generator, planes = small_planes
    sigma = dense_mesh(generator, planes, resolution, 0.0)[1]
    for q in (0.6, 0.9):  # a large and a small inside (random weights never reach EG3D's 10)
        level = float(np.quantile(sigma, q))
        (v_ref, f_ref), _ = dense_mesh(generator, planes, resolution, level)
        v, f, c = extract_mesh(generator, planes, resolution=resolution, level=level, coarse_step=4)
        assert len(f_ref) > 100
        # Same marching-cubes output: the same faces over the same vertices, positions to float rounding.
        assert len(v) == len(v_ref) and np.array_equal(f, f_ref)
        assert np.abs(v - v_ref).max() <= 1e-5
        v1, f1, c1 = extract_mesh(generator, planes, resolution=resolution, level=level, coarse_step=1)
        assert np.array_equal(f1, f) and np.abs(v1 - v).max() <= 1e-5 and np.array_equal(c1, c)


def test_coarse_to_fine_decodes_a_fraction(small_planes, monkeypatch):
    from goae.export import extract_mesh, mesh as mesh_mod

    generator, planes = small_planes
    decoded = []
    real = mesh_mod._densities
    monkeypatch.setattr(mesh_mod, "_densities", lambda *a: decoded.append(a[4].numel()) or real(*a))
    r = 96
    v, f, c = extract_mesh(generator, planes, resolution=r, level="auto")
    n = r - 2 * round(30 / 256 * r)  # the interior; the border is never decoded
    assert len(f) > 100 and decoded[0] == len(np.unique(np.r_[np.arange(0, n, 4), n - 1])) ** 3
    assert sum(decoded) < 0.6 * n ** 3, (decoded, n ** 3)  # far cells only coarsely
