"""Image bytes <-> arrays. Images travel between stages as encoded bytes, never as objects."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(array: np.ndarray) -> bytes:
    """uint8 HxW or HxWxC array -> PNG bytes."""
    if array.dtype != np.uint8:
        raise ValueError(f"encode_png expects uint8, got {array.dtype}")
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def encode_image(array: np.ndarray, image_format: str = "png") -> bytes:
    """uint8 HxW, HxWx1 or HxWx3 array -> PNG or lossless WebP bytes."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if image_format == "png":
        return encode_png(array)
    if image_format != "webp":
        raise ValueError(f"image_format must be png or webp, got '{image_format}'")
    if array.dtype != np.uint8:
        raise ValueError(f"encode_image expects uint8, got {array.dtype}")
    img = Image.fromarray(array)
    buf = io.BytesIO()
    (img.convert("RGB") if img.mode == "L" else img).save(buf, format="WEBP", lossless=True)
    return buf.getvalue()


def check_image(data: bytes) -> tuple[int, int]:
    """Fully decode `data`; return (width, height) or raise if it is not a readable image."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.size


def decode(data: bytes, size: int, channels: int) -> np.ndarray:
    """Encoded bytes -> uint8 array (channels, size, size), converted and resized."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("L" if channels == 1 else "RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        arr = np.asarray(img, dtype=np.uint8)
    return arr[None] if channels == 1 else arr.transpose(2, 0, 1)


def decode_batch(images: list[bytes], size: int, channels: int) -> np.ndarray:
    """List of encoded images -> uint8 array (N, channels, size, size)."""
    out = np.empty((len(images), channels, size, size), dtype=np.uint8)
    for i, data in enumerate(images):
        out[i] = decode(data, size, channels)
    return out


def image_format(data: bytes) -> str:
    """png, jpeg, webp or other, from the first bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "other"


def resize_encoded(data: bytes, shorter_side: int) -> bytes:
    """A copy of an encoded image whose shorter side is `shorter_side` (never enlarged; the original
    bytes if it is already that small): JPEG (quality 95) stays JPEG, anything else becomes PNG."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        if min(w, h) <= shorter_side:
            return data
        scale = shorter_side / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        jpeg = img.format == "JPEG"
        img = img.convert("RGB" if jpeg or img.mode not in ("L", "RGB", "RGBA") else img.mode)
        small = img.resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=95) if jpeg else small.save(buf, format="PNG")
    return buf.getvalue()
