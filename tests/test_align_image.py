"""Photo decoding (goae.align.image): the raster allow-list, bombs, truncation, frames, modes. No mediapipe."""
import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import goae.align.image as image
from goae.align import ImageTooLargeError, InvalidImageError, load_image, open_image

ROOT = Path(__file__).resolve().parents[1]
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"newpath 0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


@pytest.fixture(scope="module")
def portrait(repo_examples):
    return Image.open(repo_examples / "astronaut.png").convert("RGB").resize((240, 300))


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png16_rgb(a: np.ndarray) -> bytes:
    """A 48-bit RGB PNG (Pillow does not write them)."""
    h, w, _ = a.shape
    raw = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in a)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
            + _png_chunk(b"IDAT", zlib.compress(raw)) + _png_chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------- allow-list
def test_eps_never_reaches_ghostscript(tmp_path):
    """An EPS upload is refused before Pillow's EPS plugin runs: a fake `gs` first on PATH is never called.
    The control (plain Image.open + load) shows the fake would have been called."""
    bin_dir, marker, eps = tmp_path / "bin", tmp_path / "gs_was_called", tmp_path / "photo.eps"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f'#!/bin/sh\necho "$@" >> "{marker}"\nexit 1\n')
    (bin_dir / "gs").chmod(0o755)
    eps.write_bytes(EPS)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT)}
    ours = textwrap.dedent("""
        import sys
        from PIL import Image
        from goae.align import InvalidImageError, load_image
        path = sys.argv[1]
        for photo in (path, open(path, "rb").read(), Image.open(path)):
            try:
                load_image(photo)
                print("ACCEPTED")
            except InvalidImageError as e:
                print("refused:", e)
    """)
    res = subprocess.run([sys.executable, "-c", ours, str(eps)], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("refused:") and "EPS" in line for line in lines), res.stdout
    assert not marker.exists()
    control = "import sys; from PIL import Image\ntry: Image.open(sys.argv[1]).load()\nexcept Exception: pass"
    subprocess.run([sys.executable, "-c", control, str(eps)], env=env, capture_output=True, timeout=300)
    assert marker.exists(), "control: Pillow did not call the fake gs, so the test proves nothing"


@pytest.mark.parametrize("name,data,named", [
    ("eps", EPS, "EPS"),
    ("psd", b"8BPS\x00\x01" + bytes(40), "PSD"),
    ("pdf", b"%PDF-1.4\n1 0 obj << >> endobj\ntrailer << >>\n%%EOF\n", None),
    ("ppm", b"P6\n4 4\n255\n" + bytes(48), "PPM"),
])
def test_other_formats_are_refused_by_name(tmp_path, name, data, named):
    path = tmp_path / f"photo.{name}"
    path.write_bytes(data)
    for photo in (path, data):
        with pytest.raises(InvalidImageError) as e:
            load_image(photo)
        msg = str(e.value)
        assert ("looks like " + named if named else "not an image file") in msg, msg
        assert "JPEG, PNG" in msg


def test_opened_pil_image_of_another_format_is_refused(portrait):
    ppm = Image.open(io.BytesIO(_save(portrait, "PPM")))
    with pytest.raises(InvalidImageError, match="PPM"):
        load_image(ppm)
    assert load_image(Image.open(io.BytesIO(_save(portrait, "PNG")))).size == portrait.size   # allowed format
    assert load_image(portrait.copy()).size == portrait.size                                  # no format: made in memory


def test_allowed_formats_decode(portrait):
    assert {"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"} <= set(image.readable_formats())
    ref = np.asarray(portrait, np.float64)
    cases = {"PNG": ({}, 0), "BMP": ({}, 0), "TIFF": ({}, 0), "WEBP": ({"lossless": True}, 0),
             "JPEG": ({"quality": 95}, 3), "MPO": ({"save_all": True, "append_images": [portrait]}, 4),
             "GIF": ({}, 12)}
    if "AVIF" in image.readable_formats():
        cases["AVIF"] = ({"quality": 90}, 6)
    for fmt, (kw, tol) in cases.items():
        out = load_image(_save(portrait, fmt, **kw))
        assert out.mode == "RGB" and out.size == portrait.size, fmt
        assert np.abs(np.asarray(out, np.float64) - ref).mean() <= tol, fmt
    assert Image.open(io.BytesIO(_save(portrait, "MPO", save_all=True, append_images=[portrait]))).format == "MPO"


def test_open_image_is_public_and_restricted(portrait):
    assert open_image(_save(portrait, "PNG")).format == "PNG"
    with pytest.raises(InvalidImageError, match="EPS"):
        open_image(EPS, "training image x.eps")


# ------------------------------------------------------------------------------------------- siblings
@pytest.mark.parametrize("fmt", ["GIF", "WEBP"])
def test_animated_images_give_their_first_frame(portrait, fmt):
    red, green = Image.new("RGB", portrait.size, (255, 0, 0)), Image.new("RGB", portrait.size, (0, 255, 0))
    kw = {"lossless": True} if fmt == "WEBP" else {}
    data = _save(red, fmt, save_all=True, append_images=[green, portrait], duration=100, **kw)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    out = np.asarray(load_image(data))
    assert (out == [255, 0, 0]).all()


def test_cmyk_jpeg_and_16_bit_inputs(portrait):
    cmyk = load_image(_save(portrait.convert("CMYK"), "JPEG", quality=95))
    assert cmyk.mode == "RGB" and np.abs(np.asarray(cmyk, np.float64) - np.asarray(portrait, np.float64)).mean() < 3
    rgb16 = np.asarray(portrait).astype(np.uint16) * 257
    np.testing.assert_array_equal(np.asarray(load_image(_png16_rgb(rgb16))), np.asarray(portrait))
    grey16 = Image.fromarray(np.asarray(portrait.convert("L")).astype(np.uint16) * 257)
    out = load_image(_save(grey16, "TIFF"))
    np.testing.assert_array_equal(np.asarray(out)[..., 0], np.asarray(portrait.convert("L")))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP", "TIFF", "BMP"])
def test_truncated_files(portrait, fmt):
    data = _save(portrait, fmt)
    with pytest.raises(InvalidImageError, match="corrupt or truncated"):
        load_image(data[: len(data) // 2])


@pytest.mark.parametrize("fmt,mode", [("PNG", "1"), ("GIF", "P"), ("TIFF", "1"), ("BMP", "1")])
def test_bombs_refused_before_decoding(monkeypatch, fmt, mode):
    data = _save(Image.new(mode, (8000, 8000)), fmt)          # 64 MP, over MAX_PIXELS
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or None)
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_image(data)
    assert decoded == []


def test_header_only_bomb():
    # A 13-byte-header GIF claiming 65535x65535 (4.3 GP): Pillow's own bomb check refuses it at open.
    gif = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0) + b",\x00\x00\x00\x00\xff\xff\xff\xff\x00\x02\x00;"
    with pytest.raises(ImageTooLargeError, match="decompression bomb"):
        load_image(gif)
