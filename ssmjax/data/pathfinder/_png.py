"""Pathfinder files: PNG encoding and decoding, :func:`read_metadata`."""

import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["read_metadata"]


# --------------------------------------------------------------------------------------
# PNG and metadata files
# --------------------------------------------------------------------------------------

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def _png_bytes(image: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a ``(h, w)`` uint8 array (filter 0, deterministic)."""
    h, w = image.shape
    raw = np.zeros((h, w + 1), np.uint8)
    raw[:, 1:] = image
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return (
        _PNG_SIGNATURE
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6))
        + _png_chunk(b"IEND", b"")
    )


def _unfilter(raw: np.ndarray, bpp: int) -> np.ndarray:
    """Undoes the PNG row filters of ``raw`` ``(h, 1 + stride)``."""
    h, stride = raw.shape[0], raw.shape[1] - 1
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int64)
    for y in range(h):
        kind, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if kind == 0:
            cur = line
        elif kind == 1:  # Sub: running sum per byte of a pixel
            cur = np.cumsum(line.reshape(-1, bpp), axis=0).reshape(-1) % 256
        elif kind == 2:  # Up
            cur = (line + prev) % 256
        elif kind in (3, 4):  # Average, Paeth: sequential along the row
            cur = np.zeros(stride, np.int64)
            for i in range(stride):
                a = cur[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                if kind == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[i] = (line[i] + pred) % 256
        else:
            raise ValueError(f"bad PNG filter type {kind}")
        out[y] = cur
        prev = cur
    return out


def _decode_png(data: bytes) -> np.ndarray:
    """Pure-NumPy PNG reader for 8-bit, non-interlaced gray/RGB(A) images, as ``L``."""
    if data[:8] != _PNG_SIGNATURE:
        raise ValueError("not a PNG file")
    pos, idat, header = 8, [], None
    while pos + 8 <= len(data):
        length, tag = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if tag == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif tag == b"IDAT":
            idat.append(body)
        elif tag == b"IEND":
            break
    if header is None:
        raise ValueError("PNG without IHDR")
    w, h, depth, ctype, _, _, interlace = header
    channels = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or interlace or channels is None:
        raise ValueError(
            f"PNG with bit depth {depth}, colour type {ctype}, interlace {interlace} needs "
            "Pillow (pip install pillow)"
        )
    raw = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8)
    pix = _unfilter(raw.reshape(h, w * channels + 1), channels).reshape(h, w, channels)
    if channels <= 2:
        return pix[..., 0]
    rgb = pix[..., :3].astype(np.uint32)  # PIL's convert("L")
    return ((19595 * rgb[..., 0] + 38470 * rgb[..., 1] + 7471 * rgb[..., 2] + 32768) >> 16).astype(
        np.uint8
    )


def _read_png(path: Path) -> np.ndarray:
    """A PNG as a 2-D uint8 gray array (Pillow's ``convert("L")`` when installed)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is usually there
        return _decode_png(path.read_bytes())
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def read_metadata(path: str | os.PathLike) -> list[list[str]]:
    """The rows of one ``metadata/{batch}.npy`` file, as lists of strings.

    Accepts both formats in circulation: plain text (one space-separated row per line, as
    in the LRA release despite the ``.npy`` extension) and a binary ``np.save`` array of
    strings (what the upstream generator writes; read with ``allow_pickle=False``).

    Args:
      path: the metadata file.

    Returns:
      One list of fields per image; fields 0, 1 and 3 are the image folder
      (``imgs/{batch}``), file name (``sample_{i}.png``) and label.

    Raises:
      ValueError: for a binary file that holds pickled objects.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = Path(d) / "0.npy"
    ...     _ = p.write_text("imgs/0 sample_0.png 0 1 1.0 14 4 2 0.5 1 1\\n")
    ...     text = read_metadata(p)
    ...     np.save(p, np.array([["imgs/0", "sample_0.png", "0", "1"]]))
    ...     (text[0][:4], read_metadata(p))
    (['imgs/0', 'sample_0.png', '0', '1'], [['imgs/0', 'sample_0.png', '0', '1']])
    """
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x93NUMPY"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:
            raise ValueError(f"{path}: binary metadata must be a string array ({e})") from e
        rows = np.atleast_2d(arr).tolist()
        return [[x.decode() if isinstance(x, bytes) else str(x) for x in row] for row in rows]
    return [line.split() for line in data.decode("utf-8").splitlines() if line.strip()]
