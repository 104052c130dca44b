"""Exports: orbit cameras, rendered views, MP4, 16-bit depth PNG, marching-cubes mesh, PLY and GLB.

Generator-dependent tests use the tiny GOAE generator of the parity goldens (random weights) at a low
neural rendering resolution; the mesh/PLY/GLB readers below are written independently of goae.export.
"""
import json
import math
import struct
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

import goae.export
from goae.camera import CameraError, orbit_cameras, view_grid_cameras, yaw_pitch_from_label
from goae.export import (ExportError, density_grid, extract_mesh, load_depth, marching_cubes, render_views,
                         resolve_mesh_level, save_depth, save_glb, save_ply, to_uint8, write_video)
from goae.models.eg3d import EG3DGenerator
from goae.models.renderer import sample_from_planes
from goae.pipeline import GOAEOutput, GOAEPipeline
from tiny import load_tiny_config, tiny_generator

NEURAL_RES = 32  # low neural rendering resolution for speed (the SR still outputs 512^2)


# ----------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def generator(parity_dir: Path) -> EG3DGenerator:
    gdir = parity_dir / "goae"
    g = tiny_generator(load_tiny_config(gdir), gdir)
    g.neural_rendering_resolution = NEURAL_RES
    return g


@pytest.fixture(scope="module")
def pipe_and_result(generator):
    # render_view only needs the generator; the encoder/AFA slots stay empty.
    pipe = GOAEPipeline(generator=generator, encoder=None, afa=None)
    with torch.no_grad():
        ws = generator.mean_ws().clone()
        ws = ws + 0.3 * torch.randn(ws.shape, generator=torch.Generator().manual_seed(0))
        planes = generator.synthesize_planes(ws)
    cam = orbit_cameras(1)
    result = GOAEOutput(ws=ws, planes=planes, image=None, image_raw=None, image_depth=None, camera=cam,
                        mask=None, edit_features={})
    return pipe, result


# ----------------------------------------------------------------------------------------- cameras
def test_orbit_cameras_follow_the_official_orbit():
    n = 12
    c = orbit_cameras(n)
    assert c.shape == (n, 25) and c.dtype == torch.float32
    t = torch.arange(n, dtype=torch.float64) / n
    pos = c[:, :16].reshape(n, 4, 4)[:, :3, 3].double()
    # Orbit centred on the world origin at radius 2.7, like the training labels.
    torch.testing.assert_close(pos.norm(dim=1), torch.full((n,), 2.7, dtype=torch.float64), atol=1e-5, rtol=0)
    yaw, pitch = yaw_pitch_from_label(c.double(), lookat=(0, 0, 0))
    torch.testing.assert_close(yaw, 0.35 * torch.sin(2 * math.pi * t), atol=1e-5, rtol=0)
    torch.testing.assert_close(pitch, -0.05 + 0.25 * torch.cos(2 * math.pi * t), atol=1e-5, rtol=0)
    # Every camera looks at EG3D's pivot (0, 0, 0.2).
    fwd = c[:, :16].reshape(n, 4, 4)[:, :3, 2].double()
    to_pivot = torch.tensor([0, 0, 0.2], dtype=torch.float64) - pos
    cos = (fwd * to_pivot).sum(1) / to_pivot.norm(dim=1)
    assert (cos > 1 - 1e-6).all()
    assert torch.allclose(c[:, 16:], torch.tensor([4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]).expand(n, 9))
    for bad in (0, 2.5, float("nan")):
        with pytest.raises(CameraError):
            orbit_cameras(bad)
    assert goae.export.orbit_cameras is orbit_cameras  # old import path still works


def test_view_grid_cameras_order():
    yaws, pitches = [0.3, 0.0, -0.3], [-0.1, 0.2]
    c = view_grid_cameras(yaws, pitches)
    assert c.shape == (6, 25)
    yaw, pitch = yaw_pitch_from_label(c.double(), lookat=(0, 0, 0))
    torch.testing.assert_close(yaw, torch.tensor(yaws * 2, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(pitch, torch.tensor([-0.1] * 3 + [0.2] * 3, dtype=torch.float64), atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------- video
def _decode(path: Path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        info = dict(codec=s.codec_context.name, pix_fmt=s.codec_context.pix_fmt, rate=s.average_rate,
                    size=(s.codec_context.height, s.codec_context.width))
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return info, np.stack(frames)


def _smooth_frames(n: int, h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([np.stack([(x * 255 / w + 10 * i) % 256, y * 255 / h, np.full_like(x, 40 + 10 * i)], -1)
                     for i in range(n)]).astype(np.uint8)


def test_write_video_decodes_back(tmp_path):
    frames = _smooth_frames(10, 64, 96)
    out = write_video(frames, tmp_path / "v.mp4", fps=24)
    info, back = _decode(out)
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["rate"] == 24 and back.shape == (10, 64, 96, 3)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 3  # lossy, but the same pictures
    data = out.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")  # +faststart: the index comes first
    assert [p.name for p in tmp_path.iterdir()] == ["v.mp4"]  # no temp file left behind


def test_write_video_from_batches_odd_size(tmp_path):
    frames = _smooth_frames(7, 33, 47)
    out = write_video((frames[i:i + 3] for i in range(0, 7, 3)), tmp_path / "odd.mp4", fps=30)
    info, back = _decode(out)
    assert info["rate"] == 30 and back.shape == (7, 34, 48, 3)  # padded to even sizes


def test_write_video_errors_leave_nothing(tmp_path):
    with pytest.raises(ExportError, match="no frames"):
        write_video(np.zeros((0, 8, 8, 3), np.uint8), tmp_path / "a.mp4")
    with pytest.raises(ExportError, match="uint8"):
        write_video(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "b.mp4")
    for fps in (float("nan"), float("inf"), 0, -5):
        with pytest.raises(ExportError, match="fps"):
            write_video(np.zeros((2, 8, 8, 3), np.uint8), tmp_path / "d.mp4", fps=fps)

    def broken():
        yield np.zeros((2, 16, 16, 3), np.uint8)
        raise RuntimeError("renderer crashed")

    (tmp_path / "c.mp4").write_bytes(b"old")
    with pytest.raises(RuntimeError):
        write_video(broken(), tmp_path / "c.mp4")
    assert (tmp_path / "c.mp4").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.mp4"]


def test_render_views_to_video(pipe_and_result, tmp_path):
    pipe, result = pipe_and_result
    cams = orbit_cameras(6)
    calls = []
    frames = render_views(pipe, result, cams, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    assert frames.shape == (6, 512, 512, 3) and frames.dtype == np.uint8
    assert calls == [(4, 6), (6, 6)]
    # Batched rendering == one view at a time, in camera order (up to fp32 reordering); views differ.
    for i in (0, 5):
        single = to_uint8(pipe.render_view(result, cams[i:i + 1])["image"])[0]
        assert np.abs(frames[i].astype(int) - single.astype(int)).max() <= 1
    assert np.abs(frames[0].astype(int) - frames[3].astype(int)).max() > 2  # (tiny SR: views differ little)
    info, back = _decode(write_video(frames, tmp_path / "orbit.mp4", fps=30))
    assert back.shape == (6, 512, 512, 3) and info["rate"] == 30
    with pytest.raises(ExportError, match="one inversion"):
        render_views(pipe, GOAEOutput(ws=result.ws.expand(2, -1, -1), planes=result.planes.expand(2, -1, -1, -1),
                                      image=None, image_raw=None, image_depth=None, camera=cams[:2], mask=None,
                                      edit_features={}), cams)


# ----------------------------------------------------------------------------------------- depth
def _png_bit_depth(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return data[24]


def test_depth_png_roundtrip(pipe_and_result, tmp_path):
    pipe, result = pipe_and_result
    depth = pipe.render_view(result, orbit_cameras(3)[1:2])["image_depth"][0]  # [1,H,W]
    assert depth.shape == (1, NEURAL_RES, NEURAL_RES)
    near, far = pipe.generator.ray_range  # the file records them: no constants repeated here
    assert (near, far) == (2.25, 3.3)
    save_depth(depth, tmp_path / "d.png", tmp_path / "d_preview.png", near=near, far=far)
    assert _png_bit_depth(tmp_path / "d.png") == 16
    back = load_depth(tmp_path / "d.png")
    assert back.dtype == np.float32 and back.shape == (NEURAL_RES, NEURAL_RES)
    step = (3.3 - 2.25) / 65535
    err = np.abs(back - depth[0].numpy()).max()
    assert err <= step / 2 + 1e-6, err
    with Image.open(tmp_path / "d.png") as im:
        assert im.text["goae:near"] == "2.25" and im.text["goae:far"] == "3.3"
        assert "ray depth" in im.text["goae:convention"]
    with Image.open(tmp_path / "d_preview.png") as im:
        assert im.mode == "RGB" and im.size == (NEURAL_RES, NEURAL_RES)
        preview = np.asarray(im)
    d = depth[0].numpy()
    near, far = np.unravel_index(d.argmin(), d.shape), np.unravel_index(d.argmax(), d.shape)
    assert preview[near].astype(int).sum() > preview[far].astype(int).sum()  # near is brighter


def test_depth_other_range_roundtrips(tmp_path):
    d = np.linspace(1.0, 5.0, 64, dtype=np.float32).reshape(8, 8)
    save_depth(d, tmp_path / "d.png", near=1.0, far=5.0)
    assert np.abs(load_depth(tmp_path / "d.png") - d).max() <= 4.0 / 65535


def test_depth_errors(tmp_path):
    with pytest.raises(ExportError, match="one map"):
        save_depth(torch.full((2, 4, 4), 2.5), tmp_path / "x.png", near=2.25, far=3.3)
    with pytest.raises(ExportError, match="NaN"):
        save_depth(torch.tensor([[[float("nan")]]]), tmp_path / "x.png", near=2.25, far=3.3)
    for near, far in ((3.3, 2.25), (float("nan"), 3.3), (2.25, float("inf"))):
        with pytest.raises(ExportError):
            save_depth(torch.full((1, 4, 4), 2.5), tmp_path / "x.png", near=near, far=far)
    with pytest.raises(TypeError):
        save_depth(torch.full((1, 4, 4), 2.5), tmp_path / "x.png")  # the range is the caller's: no default
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "plain.png")
    with pytest.raises(ExportError, match="metadata"):
        load_depth(tmp_path / "plain.png")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(ExportError, match="16-bit"):
        load_depth(tmp_path / "rgb.png")


# ----------------------------------------------------------------------------------------- mesh
def _signed_volume(v: np.ndarray, f: np.ndarray) -> float:
    a, b, c = v[f[:, 0]].astype(np.float64), v[f[:, 1]].astype(np.float64), v[f[:, 2]].astype(np.float64)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6)


def test_marching_cubes_sphere():
    r, n, bounds = 0.3, 48, 0.5
    x = np.linspace(-bounds, bounds, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    density = 20 * (r - np.sqrt(X ** 2 + Y ** 2 + (Z - 0.05) ** 2))  # inside > 0, centre off the origin in z
    v, f = marching_cubes(density, 0.0, bounds)
    step = 2 * bounds / (n - 1)
    radii = np.linalg.norm(v - [0, 0, 0.05], axis=1)
    assert np.abs(radii - r).max() < step / 2
    vol = _signed_volume(v, f)
    assert vol > 0 and abs(vol / (4 / 3 * math.pi * r ** 3) - 1) < 0.02  # outward (CCW) winding
    assert len(marching_cubes(density, 100.0, bounds)[1]) == 0


def test_density_grid_index_order(generator, pipe_and_result):
    _, result = pipe_and_result
    n, b = 9, 0.5
    sigma = density_grid(generator, result.planes, resolution=n, chunk=100)  # several chunks
    axis = torch.linspace(-b, b, n)
    idx = [(0, 4, 8), (8, 0, 3), (2, 7, 5), (6, 6, 1)]
    pts = torch.stack([torch.stack([axis[i], axis[j], axis[k]]) for i, j, k in idx])[None]
    feats = sample_from_planes(generator.renderer.plane_axes, result.planes.view(1, 3, 32, 256, 256), pts, 1.0)
    with torch.no_grad():
        ref = generator.decoder(feats, torch.zeros_like(pts))["sigma"][0, :, 0]
    torch.testing.assert_close(torch.tensor([sigma[i] for i in idx]), ref, atol=1e-5, rtol=1e-5)


def test_extract_mesh_tiny_generator(generator, pipe_and_result, tmp_path):
    _, result = pipe_and_result
    sigma = density_grid(generator, result.planes, resolution=32)
    level = float(np.quantile(sigma, 0.7))  # random weights: EG3D's level 10 is never reached
    with pytest.raises(ExportError, match="no surface"):
        extract_mesh(generator, result.planes, resolution=32)
    v, f, c = extract_mesh(generator, result.planes, resolution=32, level=level)
    assert len(v) > 100 and len(f) > 100 and c.shape == (len(v), 3) and c.dtype == np.uint8
    pad = round(30 / 256 * 32)  # the border forced empty: voxels [0, pad) and [32 - pad, 32) per axis
    assert np.abs(v).max() <= 0.5 - (pad - 1) / 31 + 1e-6
    # Colours are the decoder's first three feature channels at the vertices.
    pts = torch.from_numpy(v[:50])[None]
    with torch.no_grad():
        rgb = generator.decoder(sample_from_planes(generator.renderer.plane_axes, result.planes.view(1, 3, 32, 256, 256),
                                                   pts, 1.0), torch.zeros_like(pts))["rgb"][0, :, :3]
    assert np.abs((rgb.clamp(0, 1) * 255).numpy() - c[:50]).max() <= 0.5 + 1e-3
    save_ply(tmp_path / "m.ply", v, f, c)
    save_glb(tmp_path / "m.glb", v, f, c)
    pv, pf, pc = read_ply(tmp_path / "m.ply")
    np.testing.assert_array_equal(pv, v), np.testing.assert_array_equal(pf, f), np.testing.assert_array_equal(pc, c)
    gv, gf, gc = read_glb(tmp_path / "m.glb")
    np.testing.assert_array_equal(gv, v), np.testing.assert_array_equal(gf, f)
    assert np.abs(linear_to_srgb_u8(gc).astype(int) - c).max() <= 1


def test_mesh_level_auto(generator, pipe_and_result):
    _, result = pipe_and_result
    # Where the density crosses EG3D's level 10, "auto" is exactly 10.
    crossing = np.linspace(-5, 30, 1000).reshape(10, 10, 10)
    assert resolve_mesh_level(crossing, "auto") == 10.0
    assert resolve_mesh_level(crossing, 3) == 3.0
    # Random weights never reach 10: "auto" keeps the densest 10% of the interior and meshes.
    sigma = density_grid(generator, result.planes, resolution=32)
    pad = round(30 / 256 * 32)
    inner = sigma[pad:32 - pad, pad:32 - pad, pad:32 - pad]
    assert inner.max() < 10
    assert resolve_mesh_level(inner, "auto") == pytest.approx(float(np.quantile(inner, 0.9)))
    v, f, c = extract_mesh(generator, result.planes, resolution=32, level="auto")
    assert len(f) > 50 and c.shape == (len(v), 3)
    with pytest.raises(ExportError, match="number or 'auto'"):
        resolve_mesh_level(inner, "high")
    for bad in (float("nan"), float("inf"), "nan"):
        with pytest.raises(ExportError, match="finite"):
            resolve_mesh_level(inner, bad)
    with pytest.raises(ExportError, match="finite"):
        extract_mesh(generator, result.planes, resolution=32, level=float("nan"))
    with pytest.raises(ExportError, match="mesh resolution must be a finite number"):
        extract_mesh(generator, result.planes, resolution=float("nan"))



def test_mesh_resolution_is_capped_before_any_grid(generator, pipe_and_result):
    """1024^3 would be a 4.3 GB grid on the device and 8.6 GB more on the host (PyMCubes' float64 copy):
    refused at once with the limit named; EG3D's own 512 is the most."""
    from goae.export.mesh import MAX_MESH_RESOLUTION

    _, result = pipe_and_result
    assert MAX_MESH_RESOLUTION == 512
    for call in (extract_mesh, density_grid):
        with pytest.raises(ExportError, match="mesh resolution .*512"):
            call(generator, result.planes, resolution=MAX_MESH_RESOLUTION + 1)
        with pytest.raises(ExportError, match="mesh resolution .*512"):
            call(generator, result.planes, resolution=1024)

# ----------------------------------------------------------------------------------------- PLY / GLB
def read_ply(path: Path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    header = data[:end].decode("ascii").splitlines()
    assert header[:2] == ["ply", "format binary_little_endian 1.0"]
    nv = int(next(h for h in header if h.startswith("element vertex")).split()[-1])
    nf = int(next(h for h in header if h.startswith("element face")).split()[-1])
    props = [h.split()[-1] for h in header if h.startswith("property ") and "list" not in h]
    assert props == ["x", "y", "z", "red", "green", "blue"]
    vert = np.frombuffer(data, dtype=[("xyz", "<f4", 3), ("rgb", "u1", 3)], count=nv, offset=end)
    face = np.frombuffer(data, dtype=[("n", "u1"), ("idx", "<i4", 3)], count=nf, offset=end + vert.nbytes)
    assert (face["n"] == 3).all() and end + vert.nbytes + face.nbytes == len(data)
    return vert["xyz"], face["idx"], vert["rgb"]


def read_glb(path: Path):
    data = path.read_bytes()
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (0x46546C67, 2, len(data))
    jlen, jtype = struct.unpack_from("<II", data, 12)
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    gltf = json.loads(data[20:20 + jlen])
    blen, btype = struct.unpack_from("<II", data, 20 + jlen)
    assert btype == 0x004E4942 and blen % 4 == 0
    binary = data[28 + jlen:28 + jlen + blen]
    assert gltf["asset"]["version"] == "2.0" and gltf["buffers"][0]["byteLength"] <= blen
    dtypes = {5126: "<f4", 5125: "<u4", 5121: "u1"}
    widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}

    def accessor(i):
        a = gltf["accessors"][i]
        view = gltf["bufferViews"][a["bufferView"]]
        assert view["byteOffset"] % 4 == 0
        arr = np.frombuffer(binary, dtype=dtypes[a["componentType"]], count=a["count"] * widths[a["type"]],
                            offset=view["byteOffset"] + a.get("byteOffset", 0))
        return arr.reshape(a["count"], widths[a["type"]]), a

    prim = gltf["meshes"][0]["primitives"][0]
    assert prim.get("mode", 4) == 4
    v, pa = accessor(prim["attributes"]["POSITION"])
    assert np.allclose(pa["min"], v.min(0)) and np.allclose(pa["max"], v.max(0))
    normals, _ = accessor(prim["attributes"]["NORMAL"])
    assert np.allclose(np.linalg.norm(normals, axis=1), 1, atol=1e-5)
    colors, ca = accessor(prim["attributes"]["COLOR_0"])
    assert ca["componentType"] == 5126 and ca["type"] == "VEC3" and colors.min() >= 0 and colors.max() <= 1
    idx, _ = accessor(prim["indices"])
    return v, idx.reshape(-1, 3), colors


def linear_to_srgb_u8(c: np.ndarray) -> np.ndarray:
    s = np.where(c <= 0.0031308, c * 12.92, 1.055 * np.power(c, 1 / 2.4) - 0.055)
    return np.round(s * 255).astype(np.uint8)


def test_ply_glb_synthetic_mesh(tmp_path):
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    f = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]], np.int64)  # tetrahedron, outward
    c = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [128, 64, 5]], np.uint8)
    assert _signed_volume(v, f) > 0
    save_ply(tmp_path / "t.ply", v, f, c)
    save_glb(tmp_path / "t.glb", v, f, c)
    pv, pf, pc = read_ply(tmp_path / "t.ply")
    np.testing.assert_array_equal(pv, v), np.testing.assert_array_equal(pf, f), np.testing.assert_array_equal(pc, c)
    gv, gf, gc = read_glb(tmp_path / "t.glb")
    np.testing.assert_array_equal(gv, v), np.testing.assert_array_equal(gf, f)
    np.testing.assert_array_equal(linear_to_srgb_u8(gc), c)
    with pytest.raises(ExportError, match="face indices"):
        save_glb(tmp_path / "bad.glb", v, f + 1, c)
    with pytest.raises(ExportError, match="colors"):
        save_ply(tmp_path / "bad.ply", v, f, c.astype(np.float32))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.glb", "t.ply"]
