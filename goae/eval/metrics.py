"""The inversion metrics of the GOAE / PTI / TriPlaneNet tables, on one set of conventions.

The official GOAE repository publishes no evaluation code, so goae follows the scripts those tables descend
from (pSp/e4e `scripts/calc_losses_on_images.py`, `calc_id_loss_parallel.py`):
- images are the aligned 512x512 input and the reconstruction rendered at the input camera, both area-resized
  to `resolution` (256, as pSp/e4e) and in [-1, 1];
- MSE: mean squared difference of the [-1, 1] images (pSp's `MSELoss` after `Normalize(0.5, 0.5)`);
- LPIPS v0.1 with the AlexNet trunk (pSp/e4e's `LPIPS(net_type='alex')`; 'vgg' on request);
- SSIM (Wang et al. 2004): [0, 1] images, 11x11 Gaussian window of sigma 1.5, K1 0.01, K2 0.03, population
  statistics, per channel, averaged over the valid (un-padded) region and the channels; equals scikit-image's
  `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)`;
- identity: cosine of ArcFace IR-SE50 embeddings of the pSp/e4e face crop (the identity network of
  training's loss; pSp's tables use CurricularFace with MTCNN re-alignment, which goae does not ship);
- FID: Fréchet distance between Gaussian fits of Inception pool3 features (pytorch-fid's network).
Every per-image function takes [N,3,H,W] tensors in [-1, 1] and returns [N].
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from goae.models.goae import resize

SSIM_SIGMA, SSIM_K1, SSIM_K2 = 1.5, 0.01, 0.03
SSIM_RADIUS = int(3.5 * SSIM_SIGMA + 0.5)  # scipy.ndimage's truncate=3.5, as scikit-image filters: 11 taps


def prepare(x: torch.Tensor, resolution: int | None) -> torch.Tensor:
    """[N,3,H,W] in [-1, 1] -> float32 at resolution x resolution (area-averaged down; None keeps the size)."""
    x = x.float()
    return x if resolution is None else resize(x, resolution)


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() - y.float()).pow(2).flatten(1).mean(1)


def _gaussian_window(device) -> torch.Tensor:
    t = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64, device=device)
    g = torch.exp(-0.5 * (t / SSIM_SIGMA) ** 2)
    return g / g.sum()


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of [-1, 1] images, computed on [0, 1] in float64 (module docstring for the conventions)."""
    a, b = (x.double() + 1) / 2, (y.double() + 1) / 2
    n, c = a.shape[:2]
    g = _gaussian_window(a.device)
    def blur(t):  # separable Gaussian, valid region only (what scikit-image averages after its reflect padding)
        t = t.reshape(n * c, 1, *t.shape[2:])
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = SSIM_K1 ** 2, SSIM_K2 ** 2  # data range 1
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.reshape(n, -1).mean(1).float()


def identity_similarity(net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine of the unit face embeddings of `net` (goae.eval.networks.IdentityNet)."""
    return (net.embed(x) * net.embed(y)).sum(1)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean, covariance) of [N, D] features, as pytorch-fid (unbiased covariance, float64)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"FID needs at least 2 feature vectors, got {f.shape[0] if f.ndim == 2 else f.shape}")
    return f.mean(0), np.cov(f, rowvar=False)


def _sqrt_psd(m: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((m + m.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)). The trace term is taken as the sum of the square
    roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (symmetric, same spectrum as S1 S2): no complex sqrtm."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    r = _sqrt_psd(s1)
    w = np.linalg.eigvalsh((r @ s2 @ r + (r @ s2 @ r).T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(w, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_sqrt)


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID of two [N, D] feature sets. With fewer samples than dimensions (N_a * N_b <= D^2: test sets of a few
    hundred images against 2048-d pool3 features) the same value is taken from the [N_a, N_b] cross-product of the
    centred features instead of two D x D matrices: tr((S_a S_b)^(1/2)) is the sum of the singular values of
    A B^T / sqrt((N_a - 1)(N_b - 1)), and tr(S) = ||A||_F^2 / (N - 1)."""
    a, b = (np.asarray(f, dtype=np.float64) for f in (features_a, features_b))
    for f in (a, b):
        if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] != a.shape[1]:
            raise ValueError(f"FID needs at least 2 feature vectors of one size per set, got shapes {a.shape} and {b.shape}")
    if len(a) * len(b) > a.shape[1] ** 2:
        return frechet_distance(*feature_statistics(a), *feature_statistics(b))
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    trace_sqrt = float(np.linalg.svd(ca @ cb.T, compute_uv=False).sum()) / np.sqrt(na * nb)
    mean_term = float(((a.mean(0) - b.mean(0)) ** 2).sum())
    return mean_term + float((ca ** 2).sum()) / na + float((cb ** 2).sum()) / nb - 2 * trace_sqrt


# Names of the per-image metrics, and whether higher is better (the report sorts best / worst by it).
HIGHER_IS_BETTER = {"mse": False, "lpips": False, "ssim": True, "id": True}


def view_key(yaw: float, pitch: float = 0.0) -> str:
    """Per-image key of the identity similarity between the input and the view at (yaw, pitch) degrees."""
    return f"id_yaw{yaw:+g}" + (f"_pitch{pitch:+g}" if pitch else "")


def higher_is_better(name: str) -> bool:
    return HIGHER_IS_BETTER.get(name, name.startswith("id"))


def finite_mean(values) -> float | None:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return float(np.mean(vals)) if vals else None
