"""Photo input: decode and validate a path / bytes / PIL image / numpy array into an 8-bit RGB PIL image.

Only raster photo formats are decoded (RASTER_FORMATS). Pillow can open many more, and some hand the file to
other programs or rarely exercised parsers: EPS goes to Ghostscript when it is installed. Uploads are
untrusted, so everything else is refused with the format it looks like.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from goae.align.errors import AlignError, ImageTooLargeError, InvalidImageError

Photo = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]   # what align_face accepts

# Pillow format names. MPO is what Pillow calls a phone JPEG with a second image (depth, stereo); GIF, WEBP and
# TIFF give their first frame. HEIF only when a plugin such as pillow-heif has registered it.
RASTER_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "AVIF", "HEIF", "GIF", "BMP", "TIFF")
MAX_PIXELS = 50_000_000  # refuse larger photos (decompression bombs)


def readable_formats() -> tuple[str, ...]:
    """The RASTER_FORMATS this Pillow can open (Image.open raises KeyError for an unregistered name)."""
    Image.init()
    return tuple(f for f in RASTER_FORMATS if f in Image.OPEN)


def open_image(data: bytes, what: str = "the image") -> Image.Image:
    """Decode bytes in one of RASTER_FORMATS, as they are (mode, EXIF); load_image makes them RGB.

    The pixel count is checked from the header, before any pixel is decoded."""
    if len(data) == 0:
        raise InvalidImageError(f"{what} is empty (0 bytes), not an image.")
    formats = readable_formats()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=formats)
            check_pixels(im.size, what)   # header only: refuse before decoding any pixels
            im.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLargeError(f"{what} is too large to decode safely (possible decompression bomb): {e}") from e
    except Image.UnidentifiedImageError as e:
        fmt = sniff_format(data)
        raise InvalidImageError(_refusal(what, fmt, formats)) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, AlignError):
            raise
        raise InvalidImageError(f"{what} is corrupt or truncated: {e}") from e
    return im


def sniff_format(data: bytes) -> str | None:
    """The Pillow format whose signature check accepts the first bytes, to name a refused file. Only the plugins'
    prefix tests run (what Image.open does first); no parser and no external program sees the data."""
    Image.init()
    prefix = data[:16]
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1]
        try:
            hit = accept is not None and accept(prefix)
        except Exception:    # a prefix test choking on 16 bytes says nothing either way
            continue
        if hit and not isinstance(hit, str):   # a string is Pillow's "looks like X, but unsupported here"
            return fmt
    return None


def _refusal(what: str, fmt: str | None, formats: tuple[str, ...]) -> str:
    if fmt:   # from the signature alone: a guess where formats share one (TGA looks like CUR)
        return f"{what} looks like {fmt}, not one of the photo formats goae reads ({', '.join(formats)})."
    return f"{what} is not an image file goae can read ({', '.join(formats)})."


def check_pixels(size: tuple[int, int], what: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InvalidImageError(f"{what} has no pixels ({w}x{h}).")
    if w * h > MAX_PIXELS:
        raise ImageTooLargeError(
            f"{what} has {w}x{h} = {w * h / 1e6:.1f} MP, more than the {MAX_PIXELS / 1e6:.0f} MP limit "
            "(possible decompression bomb); downscale it first.")


def _array_to_image(a: np.ndarray) -> Image.Image:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InvalidImageError(f"array of shape {a.shape} is not an image (expected HxW, HxWx3 or HxWx4).")
    check_pixels((a.shape[1], a.shape[0]), "the array")
    if a.dtype == np.uint8:
        pass
    elif a.dtype == np.bool_:
        a = a.astype(np.uint8) * 255
    elif a.dtype == np.uint16:
        a = (a.astype(np.uint32) * 255 + 32767) // 65535      # 16-bit -> 8-bit with rounding
    elif np.issubdtype(a.dtype, np.floating):
        a = np.nan_to_num(a.astype(np.float64))
        a = a * 255 if a.max(initial=0) <= 1.0 else a          # floats: [0,1] or already [0,255]
        a = np.clip(np.rint(a), 0, 255)
    elif np.issubdtype(a.dtype, np.integer):
        a = np.clip(a, 0, 255)
    else:
        raise InvalidImageError(f"array dtype {a.dtype} is not an image type.")
    return Image.fromarray(np.ascontiguousarray(a.astype(np.uint8)))


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white, 16/32-bit values are rescaled."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im).astype(np.float64)
        if im.mode.startswith("I;16") or (im.mode == "I" and a.max(initial=0) > 255):
            a = a / 257.0                                       # 0..65535 -> 0..255
        elif im.mode == "F" and a.max(initial=0) <= 1.0:
            a = a * 255.0
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info) \
            or (im.mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")                                # L, 1, P, CMYK, YCbCr, HSV, ...
    except (ValueError, OSError) as e:
        raise InvalidImageError(f"cannot convert a {im.mode!r} image to RGB: {e}") from e


def load_image(photo: Photo) -> Image.Image:
    """Path / bytes / PIL image / numpy array -> 8-bit RGB PIL image, EXIF orientation applied."""
    if isinstance(photo, Image.Image):
        # An image the caller opened is decoded lazily: converting an EPS one would still run Ghostscript.
        if photo.format is not None and photo.format not in RASTER_FORMATS:
            raise InvalidImageError(_refusal("the image", photo.format, readable_formats()))
        check_pixels(photo.size, "the image")
        im = photo
    elif isinstance(photo, np.ndarray):
        return _to_rgb(_array_to_image(photo))                  # L, RGB or RGBA; no EXIF in an array
    elif isinstance(photo, (bytes, bytearray, memoryview)):
        im = open_image(bytes(photo), "the image data")
    elif isinstance(photo, (str, os.PathLike)):
        path = Path(photo)
        if not path.is_file():
            raise InvalidImageError(f"photo {str(path)!r} does not exist or is not a file.")
        im = open_image(path.read_bytes(), f"photo {str(path)!r}")
    else:
        raise InvalidImageError(f"cannot read a photo from a {type(photo).__name__}; "
                                "pass a path, bytes, a PIL image or a numpy array.")
    try:
        im = ImageOps.exif_transpose(im)       # phone photos store rotation in EXIF
    except Exception:                          # broken EXIF must not stop alignment; keep pixels as stored
        pass
    return _to_rgb(im)
