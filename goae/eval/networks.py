"""The frozen networks behind the metrics, shared by `goae eval` and training's losses (train/losses.py).

- LPIPS v0.1 (Zhang et al. 2018) over an AlexNet or VGG16 trunk: unit-normalised features of five ReLU taps,
  weighted per channel by the learned 1x1 "lin" layers. Parameter names are those of the published files:
  torchvision's `alexnet-owt-7be5be79.pth` / `vgg16-397923af.pth` (`features.*`) and lpips'
  `weights/v0.1/alex.pth` / `vgg.pth` (`lin{k}.model.1.weight`).
- ArcFace IR-SE50 (Deng et al. 2019; InsightFace_Pytorch's `model_ir_se50.pth`, distributed with pSp/e4e):
  512-d unit face embeddings of the pSp/e4e face crop.
- Inception-v3 as FID uses it (pytorch-fid's port of the 2015 TF graph, `pt_inception-2015-12-05-6726825d.pth`):
  2048-d pool3 features.

Files are read with `torch.load(weights_only=True)` or safetensors: never a pickle executed. Every key and shape
is checked before anything is copied, so a wrong or truncated file is one clear error naming the file.
Parameters never require grad and the modules stay in eval mode; gradients still flow to the images.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from goae.io import one_line


class MissingWeightsError(FileNotFoundError):
    """A metric-network file is not there: says which file, what it is and how to give its path."""


class WeightsFileError(ValueError):
    """A metric-network file exists but is not the expected weights (unreadable, truncated, wrong keys or shapes)."""


def read_state_dict(path: str | os.PathLike | None, desc: str, hint: str) -> Mapping[str, torch.Tensor]:
    """Tensors of a .safetensors or PyTorch state-dict file, read without running code. `desc` says what the file is,
    `hint` how the user gives its path (both go into the errors)."""
    if path is None or not os.path.isfile(path):
        raise MissingWeightsError(f"{desc} not found at {str(path)!r}. Download it and {hint}.")
    try:
        if str(path).endswith(".safetensors"):
            from safetensors.torch import load_file
            sd = load_file(str(path), device="cpu")
        else:  # weights_only: a weights file must never be able to run code when loaded
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsFileError(f"cannot read {path} as {desc}: the file is truncated or not a PyTorch state dict "
                               f"({type(e).__name__}: {one_line(str(e)[:200])})") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"{path} is not a state dict of tensors (expected {desc}); got {type(sd).__name__}")
    return sd


def load_into(targets: dict[str, nn.Module], sd: Mapping[str, torch.Tensor], path, desc: str) -> None:
    """Copy `sd` into modules keyed by prefix, after checking every key and shape (extra keys are ignored: the
    torchvision files also hold the classifier). BatchNorm's num_batches_tracked is optional (older files)."""
    expected = {p + k: v for p, m in targets.items() for k, v in m.state_dict().items()}
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or wrong:
        parts = [f"{len(missing)} missing keys, first: {missing[:5]}"] if missing else []
        parts += [f"{len(wrong)} keys with wrong shapes, first: {wrong[:5]}"] if wrong else []
        raise WeightsFileError(f"{path} does not hold the expected {desc}: " + "; ".join(parts)
                               + f". The file has keys like {list(sd)[:5]}.")
    for p, m in targets.items():
        m.load_state_dict({k: sd.get(p + k, v) for k, v in m.state_dict().items()})


class FrozenNet(nn.Module):
    """Fixed metric network: no trainable parameters, always eval (BatchNorm statistics never update)."""

    def freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "FrozenNet":
        return super().train(False)


# ------------------------------------------------------------------------------------------------ LPIPS
# torchvision trunks: (out channels, kernel, stride, padding) per conv, "M" = max-pool; and the ReLU indices in
# `features` that lpips taps (relu1..relu5 for AlexNet; relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 for VGG16).
TRUNKS = {
    "alex": dict(layers=((64, 11, 4, 2), "M3", (192, 5, 1, 2), "M3", (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1)),
                 taps=(1, 4, 7, 9, 11), channels=(64, 192, 384, 256, 256)),
    "vgg": dict(layers=tuple((v, 3, 1, 1) if v != "M" else "M2" for v in
                             (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)),
                taps=(3, 8, 15, 22, 29), channels=(64, 128, 256, 512, 512)),
}
TRUNK_FILES = {"alex": "ImageNet AlexNet weights alexnet-owt-7be5be79.pth (torchvision; "
                       "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth)",
               "vgg": "ImageNet VGG16 weights vgg16-397923af.pth (torchvision; "
                      "https://download.pytorch.org/models/vgg16-397923af.pth)"}
LIN_FILES = {net: f"LPIPS v0.1 {name} linear-layer weights {net}.pth (lpips package / richzhang/PerceptualSimilarity, "
                  f"lpips/weights/v0.1/{net}.pth)" for net, name in (("alex", "AlexNet"), ("vgg", "VGG"))}


class _NetLin(nn.Module):
    """lpips' NetLinLayer: 1x1 conv, no bias. Index 0 is lpips' Dropout (a no-op here: always eval)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))
        # Trained lin weights are >= 0 (lpips clamps them), so the distance is >= 0; keep that for random ones.
        nn.init.uniform_(self.model[1].weight, 0.0, 1.0)


class LPIPS(FrozenNet):
    """LPIPS v0.1 on the `net` trunk ('alex' or 'vgg'). `forward(x, y) -> [N]` distances of [N,3,H,W] in [-1, 1]."""

    def __init__(self, net: str = "vgg"):
        super().__init__()
        if net not in TRUNKS:
            raise ValueError(f"LPIPS trunk must be one of {sorted(TRUNKS)}, got {net!r}")
        self.net, spec = net, TRUNKS[net]
        layers, c = [], 3
        for v in spec["layers"]:
            if isinstance(v, str):
                layers.append(nn.MaxPool2d(int(v[1]), 2))
            else:
                layers += [nn.Conv2d(c, v[0], v[1], v[2], v[3]), nn.ReLU()]
                c = v[0]
        self.features = nn.Sequential(*layers)  # keys features.{i}.weight/bias == torchvision's
        for m in self.features:  # torchvision's VGG init: random features stay informative through all the convs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.taps = spec["taps"]
        # lpips' ScalingLayer: maps [-1, 1] images to (roughly) ImageNet mean/std normalisation.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        for i, ch in enumerate(spec["channels"]):
            setattr(self, f"lin{i}", _NetLin(ch))
        self.freeze()

    @classmethod
    def from_pretrained(cls, trunk_path: str | os.PathLike | None, lin_path: str | os.PathLike | None,
                        net: str = "vgg", hints: tuple[str, str] = ("pass its path", "pass its path")) -> "LPIPS":
        """torchvision's trunk file (classifier keys ignored) + lpips' weights/v0.1/<net>.pth. `hints`: how the user
        gives each path (in the errors)."""
        model = cls(net)
        load_into({"features.": model.features}, read_state_dict(trunk_path, TRUNK_FILES[net], hints[0]), trunk_path,
                  TRUNK_FILES[net])
        lins = {f"lin{i}.": getattr(model, f"lin{i}") for i in range(len(model.taps))}
        load_into(lins, read_state_dict(lin_path, LIN_FILES[net], hints[1]), lin_path, LIN_FILES[net])
        return model

    def tapped(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The five tapped ReLU outputs of the scaled image, each unit-normalised over channels."""
        h, out = (x.to(self.shift.dtype) - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:  # lpips: h / (||h|| + 1e-10); F.normalize keeps the gradient finite at all-zero pixels
                out.append(F.normalize(h, dim=1, eps=1e-10))
            if i == self.taps[-1]:
                break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Separate passes: a batched cat([x, y]) would also backpropagate through the (usually constant) target.
        dist = sum(getattr(self, f"lin{k}").model((fx - fy).pow(2)).mean((2, 3))
                   for k, (fx, fy) in enumerate(zip(self.tapped(x), self.tapped(y))))
        return dist.reshape(x.shape[0])


# -------------------------------------------------------------------------------------------- identity
IRSE50_FILE = ("ArcFace IR-SE50 identity network model_ir_se50.pth (published with pixel2style2pixel / "
               "InsightFace_Pytorch)")
_IRSE50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, out, units); 1st unit stride 2


class _SEModule(nn.Module):
    """Squeeze-and-excitation channel gate (reduction 16), 1x1 convs without bias."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class _BottleneckIRSE(nn.Module):
    """Improved residual unit: BN-conv-PReLU-conv(stride)-BN-SE, plus an identity/projection shortcut."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        if in_channels == depth:  # MaxPool2d(1, stride) == strided subsampling, no parameters
            self.shortcut_layer = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(in_channels, depth, 1, stride, bias=False),
                                                nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels), nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth), _SEModule(depth, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """ArcFace IR-SE50 backbone for 112x112 faces -> 512-d unit embedding (InsightFace_Pytorch key names)."""

    def __init__(self):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        self.body = nn.Sequential(*[_BottleneckIRSE(cin if u == 0 else cout, cout, 2 if u == 0 else 1)
                                    for cin, cout, units in _IRSE50_STAGES for u in range(units)])
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(0.6), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.output_layer(self.body(self.input_layer(x))), dim=1)


class IdentityNet(FrozenNet):
    """IR-SE50 on the pSp/e4e face crop: `embed(x)` -> [N,512] unit embeddings of [N,3,H,W] aligned faces in
    [-1, 1] (any resolution: area-pooled to 256, rows 35:223 x columns 32:220, pooled to 112)."""

    def __init__(self):
        super().__init__()
        self.facenet = IRSE50()
        self.freeze()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None, hint: str = "pass its path"):
        model = cls()
        load_into({"": model.facenet}, read_state_dict(path, IRSE50_FILE, hint), path, IRSE50_FILE)
        return model

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x.to(self.facenet.input_layer[0].weight.dtype), (256, 256))  # pSp face_pool
        x = x[:, :, 35:223, 32:220]  # pSp/e4e crop of the face region of an aligned 256x256 image
        return self.facenet(F.adaptive_avg_pool2d(x, (112, 112)))


# ------------------------------------------------------------------------------------------- Inception
INCEPTION_FILE = ("FID Inception-v3 weights pt_inception-2015-12-05-6726825d.pth (pytorch-fid; "
                  "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth)")


class _Conv(nn.Module):
    """torchvision's BasicConv2d: conv (no bias) + BatchNorm (eps 1e-3) + ReLU; keys conv.* and bn.*."""

    def __init__(self, cin: int, cout: int, kernel, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # the TF graph's 3x3 average pool ignores the padding (pytorch-fid's FIDInception* blocks)
    return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)


class _MixedA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, 1)
        self.branch5x5_1, self.branch5x5_2 = _Conv(cin, 48, 1), _Conv(48, 64, 5, padding=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, padding=1)
        self.branch_pool = _Conv(cin, pool, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), self.branch_pool(_avg3(x))], 1)


class _MixedB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, 3, stride=2)
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 64, 1), _Conv(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, 2)], 1)


class _MixedC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        r, c = dict(kernel=(1, 7), padding=(0, 3)), dict(kernel=(7, 1), padding=(3, 0))
        self.branch1x1 = _Conv(cin, 192, 1)
        self.branch7x7_1, self.branch7x7_2, self.branch7x7_3 = _Conv(cin, c7, 1), _Conv(c7, c7, **r), _Conv(c7, 192, **c)
        self.branch7x7dbl_1, self.branch7x7dbl_2 = _Conv(cin, c7, 1), _Conv(c7, c7, **c)
        self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5 = _Conv(c7, c7, **r), _Conv(c7, c7, **c), _Conv(c7, 192, **r)
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))), d,
                          self.branch_pool(_avg3(x))], 1)


class _MixedD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1, self.branch3x3_2 = _Conv(cin, 192, 1), _Conv(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, 1)
        self.branch7x7x3_2 = _Conv(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, 3, stride=2)

    def forward(self, x):
        b = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, 2)], 1)


class _MixedE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # the last block pools with max in the TF graph (pytorch-fid's FIDInceptionE_2)
        self.branch1x1 = _Conv(cin, 320, 1)
        self.branch3x3_1 = _Conv(cin, 384, 1)
        self.branch3x3_2a, self.branch3x3_2b = _Conv(384, 384, (1, 3), padding=(0, 1)), _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1, self.branch3x3dbl_2 = _Conv(cin, 448, 1), _Conv(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, 1, 1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class InceptionFID(FrozenNet):
    """Inception-v3 up to pool3, as FID uses it: `features(x)` -> [N, 2048] of [N,3,H,W] images in [-1, 1]
    (bilinearly resized to 299x299). Keys are torchvision's Inception3 (the fc classifier is ignored)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = _Conv(3, 32, 3, stride=2), _Conv(32, 32, 3)
        self.Conv2d_2b_3x3, self.Conv2d_3b_1x1, self.Conv2d_4a_3x3 = _Conv(32, 64, 3, padding=1), _Conv(64, 80, 1), _Conv(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _MixedA(192, 32), _MixedA(256, 64), _MixedA(288, 64)
        self.Mixed_6a = _MixedB(288)
        self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (_MixedC(768, 128), _MixedC(768, 160),
                                                                      _MixedC(768, 160), _MixedC(768, 192))
        self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = _MixedD(768), _MixedE(1280, False), _MixedE(2048, True)
        self.freeze()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None, hint: str = "pass its path") -> "InceptionFID":
        model = cls()
        load_into({"": model}, read_state_dict(path, INCEPTION_FILE, hint), path, INCEPTION_FILE)
        return model

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, 2)))
        x = F.max_pool2d(x, 3, 2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))
