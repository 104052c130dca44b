"""train/losses.py (LPIPS-VGG16 v0.1, ArcFace IR-SE50 identity loss) and train/discriminator.py.

Random weights throughout; the pretrained loaders are checked by round-tripping files written with the official
key names (torchvision vgg16-397923af.pth, lpips v0.1/vgg.pth, pSp/e4e model_ir_se50.pth)."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from train.discriminator import LatentCodesDiscriminator, discriminator_loss, generator_adv_loss, r1_penalty
from train.losses import IDLoss, LPIPS, MissingWeightsError, WeightsFileError

# torchvision VGG16 `features` conv indices (cfg "D": a ReLU after every conv, max-pools at 4, 9, 16, 23, 30)
VGG_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_KEYS = [f"features.{i}.{p}" for i in VGG_CONVS for p in ("weight", "bias")]
LIN_SHAPES = {f"lin{i}.model.1.weight": (1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}


def images(n=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


@pytest.fixture(scope="module")
def lpips():
    torch.manual_seed(0)
    return LPIPS()


@pytest.fixture(scope="module")
def idloss():
    torch.manual_seed(0)
    m = IDLoss()
    # non-trivial BatchNorm statistics, so that "eval mode" and "buffers loaded" are actually tested
    for name, buf in m.facenet.named_buffers():
        if name.endswith("running_mean"):
            buf.normal_(0, 0.1)
        elif name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
    return m


def save_vgg16(model: LPIPS, path):
    sd = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("features.")}
    sd.update({"classifier.0.weight": torch.zeros(4, 4), "classifier.6.bias": torch.zeros(4)})  # ignored
    torch.save(sd, path)


def save_lin(model: LPIPS, path):
    torch.save({k: v.clone() for k, v in model.state_dict().items() if k.startswith("lin")}, path)


# ------------------------------------------------------------------------------------------------ LPIPS
def test_lpips_metric_properties(lpips):
    x, y = images(seed=1), images(seed=2)
    d_xy, d_yx, d_xx = lpips(x, y), lpips(y, x), lpips(x, x)
    assert d_xy.shape == (2,)
    assert torch.equal(d_xx, torch.zeros(2))
    assert (d_xy > 0).all()
    torch.testing.assert_close(d_xy, d_yx)
    # per-sample: each entry only depends on its own pair
    torch.testing.assert_close(lpips(x[1:], y[1:]), d_xy[1:])


def test_lpips_matches_layer_by_layer_definition(lpips):
    """Reference by VGG layer names: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (convs 2, 4, 7, 10, 13)."""
    x, y = images(seed=3, size=48), images(seed=4, size=48)
    sd = lpips.state_dict()
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(h):
        h, out = (h - shift) / scale, []
        for n, i in enumerate(VGG_CONVS, 1):
            if n in (3, 5, 8, 11):  # a 2x2 max-pool starts each new stage
                h = F.max_pool2d(h, 2)
            h = F.relu(F.conv2d(h, sd[f"features.{i}.weight"], sd[f"features.{i}.bias"], padding=1))
            if n in (2, 4, 7, 10, 13):
                out.append(h / (h.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    ref = sum(F.conv2d((a - b) ** 2, sd[f"lin{k}.model.1.weight"]).mean((1, 2, 3))
              for k, (a, b) in enumerate(zip(feats(x), feats(y))))
    torch.testing.assert_close(lpips(x, y), ref, rtol=1e-5, atol=1e-7)


def test_lpips_frozen_eval_and_gradients(lpips):
    assert not any(p.requires_grad for p in lpips.parameters())
    lpips.train()
    assert not lpips.training and not any(m.training for m in lpips.modules())
    x = images(seed=5).requires_grad_(True)
    lpips(x, images(seed=6)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_lpips_follows_to_dtype(lpips):
    """Buffers (the scaling layer) and weights move with .to(); inputs are cast to the module's dtype."""
    m64 = copy.deepcopy(lpips).to(torch.float64)
    x, y = images(1, 32, seed=14), images(1, 32, seed=15)
    d64 = m64(x, y)
    assert d64.dtype == torch.float64 and m64.shift.dtype == torch.float64
    torch.testing.assert_close(d64.float(), lpips(x, y), rtol=1e-4, atol=1e-6)


def test_lpips_zero_features_no_nan():
    """All-zero ReLU features (here: very negative biases) give distance 0 and finite gradients, not 0/0."""
    m = LPIPS()
    for k, v in m.state_dict().items():
        if k.endswith("bias"):
            v.fill_(-1e4)
    x = images(1, 16).requires_grad_(True)
    d = m(x, images(1, 16, seed=1))
    d.sum().backward()
    assert d.item() == 0 and torch.isfinite(x.grad).all()


def test_lpips_from_pretrained_roundtrip(lpips, tmp_path):
    assert sorted(k for k in lpips.state_dict() if k.startswith("features.")) == sorted(VGG_KEYS)
    assert {k: tuple(v.shape) for k, v in lpips.state_dict().items() if k.startswith("lin")} == LIN_SHAPES
    save_vgg16(lpips, tmp_path / "vgg16-397923af.pth")
    save_lin(lpips, tmp_path / "vgg.pth")
    torch.manual_seed(123)  # a different random init, overwritten by the files
    loaded = LPIPS.from_pretrained(tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth")
    x, y = images(seed=7), images(seed=8)
    torch.testing.assert_close(loaded(x, y), lpips(x, y), rtol=0, atol=0)
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_lpips_file_errors(lpips, tmp_path):
    vgg, lin = tmp_path / "vgg16-397923af.pth", tmp_path / "vgg.pth"
    save_vgg16(lpips, vgg)
    save_lin(lpips, lin)
    with pytest.raises(MissingWeightsError, match=r"(?s)vgg16-397923af\.pth.*losses\.lpips_vgg16") as e:
        LPIPS.from_pretrained(tmp_path / "nope.pth", lin)
    assert "nope.pth" in str(e.value) and isinstance(e.value, FileNotFoundError)
    with pytest.raises(MissingWeightsError, match=r"(?s)LPIPS v0\.1.*losses\.lpips_lin"):
        LPIPS.from_pretrained(vgg, None)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(lin.read_bytes()[:1000])
    with pytest.raises(WeightsFileError, match=r"truncated\.pth.*truncated or not a PyTorch state dict"):
        LPIPS.from_pretrained(vgg, truncated)
    with pytest.raises(WeightsFileError, match=r"(?s)vgg\.pth does not hold the expected ImageNet VGG16.*features\.0\.weight"):
        LPIPS.from_pretrained(lin, lin)  # lin file given as the VGG file: wrong keys
    bad = tmp_path / "bad_lin.pth"
    sd = torch.load(lin, weights_only=True)
    sd["lin2.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save(sd, bad)
    with pytest.raises(WeightsFileError, match=r"bad_lin\.pth.*lin2\.model\.1\.weight \(1, 64, 1, 1\) \(expected \(1, 256, 1, 1\)\)"):
        LPIPS.from_pretrained(vgg, bad)
    not_dict = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(WeightsFileError, match="tensor.pth is not a state dict"):
        LPIPS.from_pretrained(vgg, not_dict)


def test_weights_only_refuses_code(tmp_path):
    evil = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "obj": math.gcd}, evil)  # pickles a global: refused by weights_only
    with pytest.raises(WeightsFileError, match="evil.pth"):
        LPIPS.from_pretrained(evil, evil)


# ----------------------------------------------------------------------------------------------- IDLoss
def test_irse50_architecture(idloss):
    sd = idloss.facenet.state_dict()
    assert len(idloss.facenet.body) == 3 + 4 + 14 + 3
    assert sum(p.numel() for p in idloss.facenet.parameters()) == 43_797_696  # model_ir_se50.pth: ~175 MB fp32
    expected = {"input_layer.0.weight": (64, 3, 3, 3), "input_layer.2.weight": (64,),
                "body.0.res_layer.5.fc1.weight": (4, 64, 1, 1), "body.3.shortcut_layer.0.weight": (128, 64, 1, 1),
                "body.23.res_layer.5.fc2.weight": (512, 32, 1, 1), "output_layer.3.weight": (512, 512 * 7 * 7),
                "output_layer.4.running_var": (512,), "output_layer.4.weight": (512,)}
    assert {k: tuple(sd[k].shape) for k in expected} == expected
    assert not any(k.startswith("body.0.shortcut_layer") for k in sd)  # 64 -> 64: parameter-free subsampling


def test_idloss_values_gradients_and_frozen_bn(idloss):
    before = {k: v.clone() for k, v in idloss.state_dict().items()}
    idloss.train()  # must stay in eval: BatchNorm statistics of a fixed metric never update
    assert not any(m.training for m in idloss.modules())
    assert not any(p.requires_grad for p in idloss.parameters())
    y_hat, y = images(seed=9).requires_grad_(True), images(seed=10).requires_grad_(True)
    loss = idloss(y_hat, y)
    assert loss.shape == (2,) and ((loss >= 0) & (loss <= 2)).all() and (loss > 1e-3).all()
    loss.sum().backward()
    assert torch.isfinite(y_hat.grad).all() and y_hat.grad.abs().sum() > 0
    assert y.grad is None  # the target embedding is detached
    with torch.no_grad():
        torch.testing.assert_close(idloss(y[:1], y[:1]), torch.zeros(1), rtol=0, atol=1e-5)
        emb = idloss.embed(y[:1])
    assert emb.shape == (1, 512)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(1))
    after = idloss.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_idloss_face_crop(idloss):
    """Only the pSp/e4e crop rows 35:223, cols 32:220 of the 256 px image reach the network: changing the
    pixels just outside it changes nothing, changing its first/last row/column changes the embedding."""
    x512 = images(1, 512, seed=16)
    x = F.avg_pool2d(x512, 2)
    outside = x.clone()
    outside[:, :, :35] = outside[:, :, 223:] = 1.0
    outside[:, :, :, :32] = outside[:, :, :, 220:] = -1.0
    edges = x.repeat(4, 1, 1, 1)
    edges[0, :, 35], edges[1, :, 222], edges[2, :, :, 32], edges[3, :, :, 219] = 1.0, 1.0, -1.0, -1.0
    with torch.no_grad():
        e = idloss.embed(torch.cat([x, outside, edges]))
    torch.testing.assert_close(e[1], e[0], rtol=0, atol=1e-6)
    assert ((e[2:] - e[:1]).abs().amax(1) > 1e-5).all()
    # any resolution: a 512 px image is first average-pooled to 256 px (pSp's face_pool)
    with torch.no_grad():
        torch.testing.assert_close(idloss.embed(x512)[0], e[0], rtol=1e-4, atol=1e-5)


@pytest.mark.slow  # writes and reads a 175 MB file
def test_idloss_from_pretrained(idloss, tmp_path):
    path = tmp_path / "model_ir_se50.pth"
    # older files may lack num_batches_tracked: optional
    torch.save({k: v for k, v in idloss.facenet.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    torch.manual_seed(321)
    loaded = IDLoss.from_pretrained(path)
    path.unlink()
    x = images(1, 112, seed=12)
    with torch.no_grad():
        torch.testing.assert_close(loaded.embed(x), idloss.embed(x), rtol=0, atol=0)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())

    with pytest.raises(MissingWeightsError, match=r"(?s)model_ir_se50\.pth.*pixel2style2pixel.*losses\.id_weights"):
        IDLoss.from_pretrained(tmp_path / "model_ir_se50.pth")
    partial = tmp_path / "partial.pth"
    torch.save({"input_layer.0.weight": torch.zeros(64, 3, 3, 3)}, partial)
    with pytest.raises(WeightsFileError, match=r"partial\.pth .*ArcFace IR-SE50.*missing keys, first: \['input_layer\.1\.weight'"):
        IDLoss.from_pretrained(partial)


# --------------------------------------------------------------------------------------- discriminator
def test_discriminator_shapes_and_keys():
    d = LatentCodesDiscriminator()  # e4e: LatentCodesDiscriminator(512, 4)
    assert d(torch.randn(5, 512)).shape == (5, 1)
    linears = [m for m in d.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 4 and [tuple(m.weight.shape) for m in linears] == [(512, 512)] * 3 + [(1, 512)]
    assert sorted(d.state_dict()) == sorted(f"mlp.{i}.{p}" for i in (0, 2, 4, 6) for p in ("weight", "bias"))
    assert all(isinstance(d.mlp[i], torch.nn.LeakyReLU) and d.mlp[i].negative_slope == 0.2 for i in (1, 3, 5))
    assert LatentCodesDiscriminator(w_dim=32, num_layers=2)(torch.randn(3, 32)).shape == (3, 1)
    with pytest.raises(ValueError, match="num_layers"):
        LatentCodesDiscriminator(num_layers=0)


def test_gan_losses_known_values():
    ln2 = math.log(2.0)
    zeros = torch.zeros(4, 1)
    torch.testing.assert_close(discriminator_loss(zeros, zeros), torch.tensor(2 * ln2))
    torch.testing.assert_close(generator_adv_loss(zeros), torch.tensor(ln2))
    real, fake = torch.tensor([[1.0], [-2.0]]), torch.tensor([[0.5], [3.0]])
    sp = lambda t: math.log1p(math.exp(t))  # noqa: E731
    torch.testing.assert_close(discriminator_loss(real, fake),
                               torch.tensor((sp(-1.0) + sp(2.0)) / 2 + (sp(0.5) + sp(3.0)) / 2))
    torch.testing.assert_close(generator_adv_loss(fake), torch.tensor((sp(-0.5) + sp(-3.0)) / 2))
    # confident and right -> ~0; the non-saturating G loss stays finite for very negative logits
    assert discriminator_loss(torch.full((2, 1), 50.0), torch.full((2, 1), -50.0)) < 1e-20
    assert torch.isclose(generator_adv_loss(torch.full((1, 1), -100.0)), torch.tensor(100.0))


def test_r1_penalty_linear_discriminator():
    """D(w) = a.w + b: dD/dw = a for every sample, so R1 = ||a||^2 and d R1 / d a = 2a."""
    d = LatentCodesDiscriminator(w_dim=8, num_layers=1)
    a = torch.arange(1.0, 9.0)
    with torch.no_grad():
        d.mlp[0].weight.copy_(a[None])
    real_w = torch.randn(6, 8, requires_grad=True)
    r1 = r1_penalty(d(real_w), real_w)
    torch.testing.assert_close(r1, a.pow(2).sum())
    r1.backward()  # create_graph: the penalty trains D
    torch.testing.assert_close(d.mlp[0].weight.grad, 2 * a[None])
    # a nonlinear D: matches autograd per sample, averaged
    d4 = LatentCodesDiscriminator(w_dim=16, num_layers=3)
    w = torch.randn(3, 16, requires_grad=True)
    per = [torch.autograd.grad(d4(w[i:i + 1]).sum(), w)[0][i].pow(2).sum() for i in range(3)]
    torch.testing.assert_close(r1_penalty(d4(w), w), torch.stack(per).mean())
    with pytest.raises(ValueError, match="requires_grad"):
        r1_penalty(d4(w.detach()), w.detach())
