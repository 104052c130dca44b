"""Frozen perceptual and identity losses for GOAE training, as used by pSp/e4e (and so by GOAE).

- LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018): distance between unit-normalised VGG16 features,
  weighted per channel by the learned 1x1 "lin" layers.
- IDLoss: 1 - cos of ArcFace IR-SE50 face embeddings (Deng et al. 2019; pSp/e4e's identity loss).

Both networks are written here (no lpips / torchvision dependency) with the parameter names of the published
files, so `vgg16-397923af.pth` (torchvision), `weights/v0.1/vgg.pth` (lpips) and `model_ir_se50.pth`
(InsightFace_Pytorch, distributed with pSp/e4e) load without renaming. They are metrics, not trained parts:
parameters never require grad and the modules stay in eval mode, but gradients flow to the images.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

VGG16_FILE = ("ImageNet VGG16 weights vgg16-397923af.pth (torchvision; "
              "https://download.pytorch.org/models/vgg16-397923af.pth)", "losses.lpips_vgg16")
LPIPS_LIN_FILE = ("LPIPS v0.1 VGG linear-layer weights vgg.pth (lpips package / richzhang/PerceptualSimilarity, "
                  "lpips/weights/v0.1/vgg.pth)", "losses.lpips_lin")
IRSE50_FILE = ("ArcFace IR-SE50 identity network model_ir_se50.pth (published with pixel2style2pixel / "
               "InsightFace_Pytorch)", "losses.id_weights")


class MissingWeightsError(FileNotFoundError):
    """A pretrained loss-network file is not there: says which file, what it is and where to set its path."""


class WeightsFileError(ValueError):
    """A loss-network file exists but is not the expected weights (unreadable, truncated, wrong keys or shapes)."""


def _read_state_dict(path: str | os.PathLike | None, what: tuple[str, str]) -> Mapping[str, torch.Tensor]:
    desc, setting = what
    if path is None or not os.path.isfile(path):
        raise MissingWeightsError(f"{desc} not found at {str(path)!r}. Download it and set its path in the training "
                                  f"config ({setting}: PATH, or on the command line: --set {setting}=PATH).")
    try:  # weights_only: a weights file must never be able to run code when loaded
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsFileError(f"cannot read {path} as {desc}: the file is truncated or not a PyTorch state dict "
                               f"({type(e).__name__}: {str(e)[:200]})") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsFileError(f"{path} is not a state dict of tensors (expected {desc}); got {type(sd).__name__}")
    return sd


def _load_into(targets: dict[str, nn.Module], sd: Mapping[str, torch.Tensor], path, what: tuple[str, str]) -> None:
    """Copy `sd` into modules keyed by prefix, after checking every key and shape (extra keys are ignored:
    the VGG16 file also holds the classifier). BatchNorm's num_batches_tracked is optional (older files)."""
    expected = {p + k: v for p, m in targets.items() for k, v in m.state_dict().items()}
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(sd[k].shape)} (expected {tuple(v.shape)})"
             for k, v in expected.items() if k in sd and sd[k].shape != v.shape]
    if missing or wrong:
        parts = [f"{len(missing)} missing keys, first: {missing[:5]}"] if missing else []
        parts += [f"{len(wrong)} keys with wrong shapes, first: {wrong[:5]}"] if wrong else []
        raise WeightsFileError(f"{path} does not hold the expected {what[0]}: " + "; ".join(parts)
                               + f". The file has keys like {list(sd)[:5]}.")
    for p, m in targets.items():
        m.load_state_dict({k: sd.get(p + k, v) for k, v in m.state_dict().items()})


class _FrozenNet(nn.Module):
    """Fixed metric network: no trainable parameters, always eval (BatchNorm statistics never update)."""

    def _freeze(self) -> None:
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> "_FrozenNet":
        return super().train(False)


# ------------------------------------------------------------------------------------------------ LPIPS
# torchvision VGG16 config "D" (3x3 convs + ReLU, "M" = 2x2 max-pool) up to relu5_3; the last pool is not needed.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_TAPS = (3, 8, 15, 22, 29)  # indices in `features` of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_TAP_CHANNELS = (64, 128, 256, 512, 512)


class _NetLin(nn.Module):
    """lpips' NetLinLayer: 1x1 conv, no bias. Index 0 is lpips' Dropout (a no-op here: always eval)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))
        # Trained lin weights are >= 0 (lpips clamps them), so the distance is >= 0; keep that for random ones.
        nn.init.uniform_(self.model[1].weight, 0.0, 1.0)


class LPIPS(_FrozenNet):
    """LPIPS v0.1, VGG16 trunk. `forward(x, y) -> [N]` per-sample distance of [N,3,H,W] images in [-1, 1]."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for v in _VGG16:
            layers += [nn.MaxPool2d(2, 2)] if v == "M" else [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = c if v == "M" else v
        self.features = nn.Sequential(*layers)  # keys features.{0,2,5,...,28}.weight/bias == torchvision's
        for m in self.features:  # torchvision's VGG init: random features stay informative through all 13 convs
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # lpips' ScalingLayer: maps [-1, 1] images to (roughly) ImageNet mean/std normalisation.
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1), persistent=False)
        for i, ch in enumerate(_TAP_CHANNELS):
            setattr(self, f"lin{i}", _NetLin(ch))
        self._freeze()

    @classmethod
    def from_pretrained(cls, vgg16_path: str | os.PathLike, lin_path: str | os.PathLike) -> "LPIPS":
        """torchvision's vgg16-397923af.pth (classifier keys ignored) + lpips' weights/v0.1/vgg.pth."""
        model = cls()
        _load_into({"features.": model.features}, _read_state_dict(vgg16_path, VGG16_FILE), vgg16_path, VGG16_FILE)
        lins = {f"lin{i}.": getattr(model, f"lin{i}") for i in range(len(_TAP_CHANNELS))}
        _load_into(lins, _read_state_dict(lin_path, LPIPS_LIN_FILE), lin_path, LPIPS_LIN_FILE)
        return model

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """relu1_2 ... relu5_3 of the scaled image, each unit-normalised over channels."""
        h, out = (x.to(self.shift.dtype) - self.shift) / self.scale, []
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in _TAPS:  # lpips: h / (||h|| + 1e-10); F.normalize keeps the gradient finite at all-zero pixels
                out.append(F.normalize(h, dim=1, eps=1e-10))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Separate passes: a batched cat([x, y]) would also backpropagate through the (usually constant) target.
        dist = sum(getattr(self, f"lin{k}").model((fx - fy).pow(2)).mean((2, 3))
                   for k, (fx, fy) in enumerate(zip(self._features(x), self._features(y))))
        return dist.reshape(x.shape[0])


# ----------------------------------------------------------------------------------------------- IDLoss
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


class IDLoss(_FrozenNet):
    """pSp/e4e identity loss. `forward(y_hat, y) -> [N]` = 1 - cos(emb(y_hat), emb(y)), images [N,3,H,W] in
    [-1, 1] at any resolution; the target embedding is detached (only y_hat gets gradients)."""

    def __init__(self):
        super().__init__()
        self.facenet = IRSE50()
        self._freeze()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> "IDLoss":
        model = cls()
        _load_into({"": model.facenet}, _read_state_dict(path, IRSE50_FILE), path, IRSE50_FILE)
        return model

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] in [-1, 1] -> [N,512] unit embeddings of the pSp/e4e face crop."""
        x = F.adaptive_avg_pool2d(x.to(self.facenet.input_layer[0].weight.dtype), (256, 256))  # pSp face_pool
        x = x[:, :, 35:223, 32:220]  # pSp/e4e crop of the face region of an aligned 256x256 image
        return self.facenet(F.adaptive_avg_pool2d(x, (112, 112)))

    def forward(self, y_hat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():  # the target embedding is a constant (pSp/e4e detach it)
            emb_y = self.embed(y)
        return 1 - (self.embed(y_hat) * emb_y).sum(1)
