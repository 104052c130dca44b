"""mediapipe's canonical face mesh, read from face_landmarker.task: the 3D model the head pose is fitted to.

The mesh sits in a protobuf message inside the .task zip. Only one float array is needed, so a small
wire-format reader takes it, with no generated message classes.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np

from goae.landmarker import find_landmarker

_CANONICAL: dict[str, np.ndarray] = {}


def protobuf_fields(buf: bytes):
    """Minimal protobuf wire-format reader: yields (field number, wire type, value)."""
    i = 0
    def varint():
        nonlocal i
        v = shift = 0
        while True:
            c = buf[i]
            i += 1
            v |= (c & 0x7F) << shift
            shift += 7
            if c < 0x80:
                return v
    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 2:
            n = varint()
            yield num, wt, buf[i:i + n]
            i += n
        elif wt == 5:
            yield num, wt, np.frombuffer(buf[i:i + 4], "<f4")[0]
            i += 4
        elif wt == 1:
            yield num, wt, np.frombuffer(buf[i:i + 8], "<f8")[0]
            i += 8
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")


def canonical_face(model_path: str | os.PathLike | None = None) -> np.ndarray:
    """mediapipe's canonical face mesh [468,3] (cm; x to the subject's left, y up, z out of the face), read from
    geometry_pipeline_metadata_landmarks.binarypb inside face_landmarker.task (GeometryPipelineMetadata:
    field 1 = canonical_mesh; Mesh3d field 3 = vertex_buffer, 5 floats x,y,z,u,v per vertex)."""
    path = str(find_landmarker(model_path).resolve())
    if path not in _CANONICAL:
        with zipfile.ZipFile(path) as z:
            meta = z.read("geometry_pipeline_metadata_landmarks.binarypb")
        mesh = next(v for n, wt, v in protobuf_fields(meta) if n == 1 and wt == 2)
        vb = []
        for n, wt, v in protobuf_fields(mesh):
            if n == 3:
                vb.extend(np.frombuffer(v, "<f4") if wt == 2 else [v])   # packed or not
        _CANONICAL[path] = np.asarray(vb, dtype=np.float64).reshape(-1, 5)[:, :3]
    return _CANONICAL[path]
