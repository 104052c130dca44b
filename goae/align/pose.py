"""Head pose -> the EG3D camera label of the aligned crop (built with goae.camera).

The camera is the crop camera (principal point at the crop centre, f = DEFAULT_FOCAL crop widths), not the
physical one: that is the camera Deep3DFaceRecon assumes when EG3D's labels are made.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from goae.align.canonical import canonical_face
from goae.align.crop import CENTER_CROP_SIZE, LM3D_STD_5, RESCALE_FACTOR, CropParams
from goae.align.detect import Face
from goae.camera import CANONICAL_RADIUS, DEFAULT_FOCAL, intrinsics_from_focal, make_label


def _similarity(A: np.ndarray, B: np.ndarray, w: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """Weighted least-squares similarity B ~ s R A + t (Umeyama)."""
    w = np.ones(len(A)) if w is None else w
    w = w / w.sum()
    ma, mb = w @ A, w @ B
    A0, B0 = A - ma, B - mb
    U, S, Vt = np.linalg.svd((w[:, None] * B0).T @ A0)
    D = np.diag([1.0, 1.0, np.sign(np.linalg.det(U @ Vt))])
    R = U @ D @ Vt
    s = float((S * np.diag(D)).sum() / (w @ (A0 ** 2).sum(1)))
    return s, R, mb - s * R @ ma


def bfm_to_canonical(canonical: np.ndarray) -> np.ndarray:
    """Rotation taking Deep3DFaceRecon (BFM) head axes to mediapipe canonical axes, from the 5 template points
    (eyes = mean of the two eye corners, as the 68-point template does; nose tip; mouth corners). ~1.6 deg pitch."""
    mp5 = np.stack([(canonical[33] + canonical[133]) / 2, (canonical[362] + canonical[263]) / 2,
                    canonical[1], canonical[61], canonical[291]])
    return _similarity(LM3D_STD_5.astype(np.float64), mp5)[1]


def head_rotation_landmarks(landmarks478: np.ndarray, canonical: np.ndarray, iters: int = 10) -> np.ndarray:
    """Head->camera rotation (camera y up, looking down -z) from the 478 landmarks: scaled-orthographic
    Procrustes of the 468 mesh points against the canonical mesh. mediapipe's z is only roughly in x's scale,
    so its scale k is fitted too (alternating; k comes out 0.85-1.07). Appearance based: the rotation is
    relative to the viewing ray, which is what the crop camera needs, whatever the real lens was."""
    P = landmarks478[:468].astype(np.float64) * np.array([1.0, -1.0, -1.0])   # y up, z toward the camera
    P = P - P.mean(0)
    k = 1.0
    for _ in range(iters):
        s, R, _ = _similarity(canonical, P * np.array([1.0, 1.0, k]))
        Q = s * (canonical - canonical.mean(0)) @ R.T                          # model in camera axes
        k = float((Q[:, 2] @ P[:, 2]) / (P[:, 2] @ P[:, 2]))
    return R


def head_rotation_matrix(face: Face, params: CropParams) -> np.ndarray:
    """Alternative: rotation of mediapipe's facial transformation matrix, turned from its 63-degree-FOV camera of
    `face.frame` to a camera looking at the crop centre."""
    U, _, Vt = np.linalg.svd(face.transformation_matrix[:3, :3].astype(np.float64))
    M = U @ Vt
    x0, y0, w, h = face.frame
    f = (h / 2) / np.tan(np.radians(63 / 2))                  # mediapipe's perspective camera
    l, t, r, b = params.final_box_src
    d = np.array([((l + r) / 2 - x0 - w / 2) / f, -((t + b) / 2 - y0 - h / 2) / f, -1.0])
    z = -d / np.linalg.norm(d)
    x = np.cross([0.0, 1.0, 0.0], z)
    x /= np.linalg.norm(x)
    return np.stack([x, np.cross(z, x), z]) @ M


def label_from_head_pose(M: np.ndarray, T: np.ndarray) -> np.ndarray:
    """EG3D 25-number label from a head->camera rotation M and head-origin position T (BFM units, camera y up,
    looking down -z), the 3dface2idr_mat.py + fix_pose_orig + fix_intrinsics chain."""
    Rm = M.T
    # 3dface2idr_mat's scale and offset of the camera centre, then onto the sphere of the canonical radius
    c = 0.27 * (-Rm @ T) + np.array([0.0, 0.006, 0.161])
    c = CANONICAL_RADIUS * c / np.linalg.norm(c)
    pose = np.eye(4)
    pose[:3, :3] = Rm @ np.diag([1.0, -1.0, -1.0])            # y-up/-z camera -> OpenCV camera (EG3D)
    pose[:3, 3] = c
    return make_label(torch.from_numpy(pose), intrinsics_from_focal(DEFAULT_FOCAL))[0].numpy()


def estimate_camera(face: Face, params: CropParams, *, method: str = "landmarks",
                    landmarker_model: str | os.PathLike | None = None) -> np.ndarray:
    """EG3D label (float32[25]) of the aligned 512 crop of `face`, cropped with `params`.
    method="landmarks" (default, best on the GOAE labels) or "matrix" (mediapipe's transformation matrix)."""
    canonical = canonical_face(landmarker_model)
    if method == "landmarks":
        M = head_rotation_landmarks(face.landmarks478, canonical)
    elif method == "matrix":
        M = head_rotation_matrix(face, params)
    else:
        raise ValueError(f"unknown camera method {method!r}; use 'landmarks' or 'matrix'")
    M = M @ bfm_to_canonical(canonical)                       # express the head in BFM axes
    # The head origin is the template origin that POS placed (pos_t); the crop is centred on it up to the int
    # truncations. Its depth follows from the crop scale: 300 px per BFM unit in a 700 crop seen with f=4.2647.
    H = params.image_size[1]
    l, t, r, b = params.final_box_src
    u = (params.pos_t[0] - l) / (r - l) - 0.5
    v = (H - 1 - params.pos_t[1] - t) / (b - t) - 0.5
    D = DEFAULT_FOCAL * CENTER_CROP_SIZE / RESCALE_FACTOR
    return label_from_head_pose(M, np.array([u * D / DEFAULT_FOCAL, -v * D / DEFAULT_FOCAL, -D]))
