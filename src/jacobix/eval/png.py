"""Minimal PNG and animated PNG (APNG) writing with numpy and zlib, plus image grids and heat maps.

No imaging library is needed: a PNG is a signature and a few CRC-checked chunks around
zlib-compressed scanlines (each prefixed by filter byte 0).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Anchor colours of a perceptually ordered dark-blue -> green -> yellow map (viridis-like).
_HEAT_ANCHORS = np.array(
    [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64
)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}; scale floats with to_uint8()")
    if pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3):
        return np.ascontiguousarray(pixels)
    raise ValueError(f"pixels must be (H, W) grayscale or (H, W, 3) RGB, got shape {pixels.shape}")


def _header(pixels: np.ndarray) -> bytes:
    height, width = pixels.shape[:2]
    color_type = 0 if pixels.ndim == 2 else 2
    return _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0))


def _scanlines(pixels: np.ndarray) -> bytes:
    rows = pixels.reshape(pixels.shape[0], -1)  # (H, W * channels)
    return zlib.compress(np.hstack([np.zeros((rows.shape[0], 1), np.uint8), rows]).tobytes(), 9)


def write_png(path: str | Path, pixels: np.ndarray) -> Path:
    """Write a uint8 (H, W) grayscale or (H, W, 3) RGB array as a PNG file; returns the path."""
    pixels = _check_pixels(pixels)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_SIGNATURE + _header(pixels) + _chunk(b"IDAT", _scanlines(pixels)) + _chunk(b"IEND", b""))
    return path


def write_apng(path: str | Path, frames: list[np.ndarray], *, delay_ms: int = 100) -> Path:
    """Write same-shaped uint8 frames as a looping animated PNG (viewers without APNG show frame 0)."""
    if not frames:
        raise ValueError("write_apng needs at least one frame")
    frames = [_check_pixels(f) for f in frames]
    if any(f.shape != frames[0].shape for f in frames):
        raise ValueError("all APNG frames must have the same shape")
    height, width = frames[0].shape[:2]
    parts, sequence = [_SIGNATURE, _header(frames[0]), _chunk(b"acTL", struct.pack(">II", len(frames), 0))], 0
    for index, frame in enumerate(frames):
        control = struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, delay_ms, 1000, 0, 0)
        parts.append(_chunk(b"fcTL", control))
        sequence += 1
        data = _scanlines(frame)
        if index == 0:
            parts.append(_chunk(b"IDAT", data))
        else:
            parts.append(_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    parts.append(_chunk(b"IEND", b""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(parts))
    return path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] to uint8 in [0, 255]."""
    return (np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def tile(images: np.ndarray, columns: int, *, pad: int = 2, fill: int = 255) -> np.ndarray:
    """Tile (N, H, W) or (N, H, W, 3) uint8 images into one grid image, ``columns`` per row."""
    images = np.asarray(images)
    if images.ndim not in (3, 4) or len(images) == 0 or columns < 1:
        raise ValueError(f"tile needs (N, H, W[, 3]) images with N >= 1 and columns >= 1, got {images.shape}")
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, *images.shape[3:]), fill, dtype=np.uint8)
    for i, image in enumerate(images):
        top, left = pad + (i // columns) * (h + pad), pad + (i % columns) * (w + pad)
        out[top : top + h, left : left + w] = image
    return out


def heat_colors(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Map values (...) in [0, vmax] to RGB uint8 (..., 3) with a viridis-like ramp."""
    values = np.asarray(values, dtype=np.float64)
    top = float(values.max()) if vmax is None else float(vmax)
    scaled = np.clip(values / max(top, 1e-12), 0.0, 1.0) * (len(_HEAT_ANCHORS) - 1)
    low = np.floor(scaled).astype(int).clip(0, len(_HEAT_ANCHORS) - 2)
    frac = (scaled - low)[..., None]
    rgb = _HEAT_ANCHORS[low] * (1 - frac) + _HEAT_ANCHORS[low + 1] * frac
    return (rgb + 0.5).astype(np.uint8)


def upscale(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (H, W[, 3]) by an integer factor."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    return np.repeat(np.repeat(pixels, factor, axis=0), factor, axis=1)
