"""Mesh files: binary PLY and glTF 2.0 binary (.glb), written atomically.

GLB is written here (about 60 lines of glTF 2.0: one mesh, POSITION/NORMAL/COLOR_0 + uint32 indices,
KHR_materials_unlit because the colours already contain the shading) rather than adding trimesh or
pygltflib for one function. COLOR_0 is float32 *linear* RGB as the glTF spec requires (viewers convert
back to sRGB on display); PLY keeps the sRGB uint8 colours. Coordinates: see `goae.export.mesh`.
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

from goae.export.errors import ExportError
from goae.io import atomic_write_bytes


def _check_mesh(v, f, colors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    v = np.ascontiguousarray(v, dtype=np.float32)
    f = np.asarray(f)
    c = np.asarray(colors)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0:
        raise ExportError(f"vertices must be [V>0, 3], got {v.shape}")
    if f.ndim != 2 or f.shape[1] != 3 or len(f) == 0 or f.dtype.kind not in "iu":
        raise ExportError(f"faces must be integer [F>0, 3], got {f.dtype} {f.shape}")
    if f.min() < 0 or f.max() >= len(v):
        raise ExportError(f"face indices must lie in [0, {len(v) - 1}], got [{f.min()}, {f.max()}]")
    if c.shape != (len(v), 3) or c.dtype != np.uint8:
        raise ExportError(f"colors must be uint8 [{len(v)}, 3], got {c.dtype} {c.shape}")
    if not np.isfinite(v).all():
        raise ExportError("vertices contain NaN or inf")
    return v, f.astype(np.uint32), np.ascontiguousarray(c)


def save_ply(path: str | os.PathLike, v: np.ndarray, f: np.ndarray, colors: np.ndarray) -> Path:
    """Binary little-endian PLY: float x,y,z + uchar red,green,blue per vertex; int triangles."""
    v, f, c = _check_mesh(v, f, colors)
    header = ("ply\nformat binary_little_endian 1.0\n"
              "comment goae mesh, EG3D world coordinates: y up, face towards +z\n"
              f"element vertex {len(v)}\nproperty float x\nproperty float y\nproperty float z\n"
              "property uchar red\nproperty uchar green\nproperty uchar blue\n"
              f"element face {len(f)}\nproperty list uchar int vertex_indices\nend_header\n")
    vert = np.empty(len(v), dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)])
    vert["xyz"], vert["rgb"] = v, c
    face = np.empty(len(f), dtype=[("n", "u1"), ("idx", "<i4", 3)])
    face["n"], face["idx"] = 3, f
    return atomic_write_bytes(path, header.encode("ascii") + vert.tobytes() + face.tobytes())


def _vertex_normals(v: np.ndarray, f: np.ndarray) -> np.ndarray:
    fn = np.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # area-weighted face normals
    n = np.zeros_like(v, dtype=np.float64)
    for k in range(3):
        np.add.at(n, f[:, k], fn)
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return np.where(norm > 0, n / np.maximum(norm, 1e-30), [0.0, 0.0, 1.0]).astype(np.float32)


def _srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = c.astype(np.float64) / 255
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def save_glb(path: str | os.PathLike, v: np.ndarray, f: np.ndarray, colors: np.ndarray) -> Path:
    """glTF 2.0 binary (.glb) with one unlit vertex-coloured triangle mesh (see module docstring)."""
    v, f, c = _check_mesh(v, f, colors)
    blobs = [v.tobytes(), _vertex_normals(v, f).tobytes(), _srgb_to_linear(c).tobytes(), f.reshape(-1).tobytes()]
    views, offset = [], 0
    for blob, target in zip(blobs, (34962, 34962, 34962, 34963)):  # ARRAY_BUFFER x3, ELEMENT_ARRAY_BUFFER
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": target})
        offset += len(blob)  # every blob is a multiple of 4 bytes: 4-byte alignment holds
    n = len(v)
    gltf = {
        "asset": {"version": "2.0", "generator": "goae"},
        "extensionsUsed": ["KHR_materials_unlit"],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "goae_mesh"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1, "COLOR_0": 2},
                                    "indices": 3, "material": 0, "mode": 4}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 1], "metallicFactor": 0.0,
                                                "roughnessFactor": 1.0},
                       "doubleSided": True, "extensions": {"KHR_materials_unlit": {}}}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": n, "type": "VEC3",
             "min": v.min(0).tolist(), "max": v.max(0).tolist()},
            {"bufferView": 1, "componentType": 5126, "count": n, "type": "VEC3"},
            {"bufferView": 2, "componentType": 5126, "count": n, "type": "VEC3"},
            {"bufferView": 3, "componentType": 5125, "count": f.size, "type": "SCALAR"},
        ],
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }
    js = json.dumps(gltf, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    binary = b"".join(blobs)
    binary += b"\0" * (-len(binary) % 4)
    chunks = struct.pack("<II", len(js), 0x4E4F534A) + js + struct.pack("<II", len(binary), 0x004E4942) + binary
    return atomic_write_bytes(path, struct.pack("<III", 0x46546C67, 2, 12 + len(chunks)) + chunks)
