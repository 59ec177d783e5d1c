"""Image bytes <-> arrays. Images travel between stages as encoded bytes, never as objects.

Every encoded image is opened by `open_image` (check_image, decode, decode_batch, resize_encoded,
the CLIP filter), so that prepare, scoring, training input and synthesis read an image the same way:
- upright: an EXIF Orientation tag is applied (a phone's rotated JPEG is decoded as it is shown);
- 8 bits per channel: 16-bit images ("I;16" PNG/TIFF) are scaled by 1/257, 32-bit integer ("I") ones
  the same when their values fit 16 bits, else by their own min..max; float ("F") ones by 255 when
  their values lie in 0..1, else by their own min..max (NaN as 0). Never clipped to white;
- no alpha: transparent pixels (RGBA, LA, P or L/RGB with a transparency key) are composited onto
  white (`BACKGROUND`), as most training pipelines do, never left showing the colour they hold;
- mode L (grayscale, 1-bit) or RGB (anything else: palette, CMYK, YCbCr, ...).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
"""What transparent pixels become: white."""


def _scaled(values: np.ndarray, top: float) -> Image.Image:
    """A grayscale image of more than 8 bits -> mode L: by 255/`top` when its values lie in 0..top, else
    by its own finite min..max (a constant image: 0)."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = (0.0, top) if v.size == 0 or (v.min() >= 0 and v.max() <= top) else (v.min(), v.max())
    v = (v - low) * (255.0 / (high - low)) if high > low else np.zeros_like(v)
    return Image.fromarray(np.rint(v).clip(0, 255).astype(np.uint8), "L")


def open_image(data: bytes) -> Image.Image:
    """Encoded bytes -> a loaded PIL image, upright, 8-bit, without alpha, in mode L or RGB (the module's
    rules). Raises if `data` is not a readable image."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # upright (its size too); the tag is removed
    if img.mode.startswith("I"):  # "I;16", "I;16B", ..., or "I" (32-bit)
        return _scaled(np.asarray(img), 65535.0)
    if img.mode == "F":
        return _scaled(np.asarray(img), 1.0)
    if img.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in img.info:  # alpha, or a transparent colour
        rgba = img.convert("RGBA")
        out = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        out.alpha_composite(rgba)
        return out.convert("L" if img.mode in ("L", "LA", "La") else "RGB")
    if img.mode in ("L", "RGB"):
        return img
    return img.convert("L" if img.mode == "1" else "RGB")  # 1-bit; palette, CMYK, YCbCr, ...


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
    """Fully decode `data`; return its upright (width, height) or raise if it is not a readable image."""
    return open_image(data).size


def decode(data: bytes, size: int, channels: int) -> np.ndarray:
    """Encoded bytes -> uint8 array (channels, size, size), converted and resized."""
    img = open_image(data).convert("L" if channels == 1 else "RGB")
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
    bytes if it is already that small): JPEG (quality 95) stays JPEG, anything else becomes PNG. The
    copy is what `open_image` makes of the original (upright, 8-bit, alpha composited), so it decodes
    as the original does."""
    with Image.open(io.BytesIO(data)) as img:
        w, h = img.size
        jpeg = img.format == "JPEG"
    if min(w, h) <= shorter_side:
        return data
    img = open_image(data)
    w, h = img.size
    scale = shorter_side / min(w, h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = img.resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    small.save(buf, format="JPEG", quality=95) if jpeg else small.save(buf, format="PNG")
    return buf.getvalue()
