"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the data in C order, big-endian. Files may be gzip-compressed (detected from the content,
not the name). Every error names the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """A malformed or unexpected IDX file."""


def read_idx_bytes(path: str | Path) -> bytes:
    """The decompressed content of ``path`` (plain or gzip)."""
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise IDXError(f"{path}: corrupt gzip stream: {exc}") from exc


def read_idx(path: str | Path, shape: tuple[int | None, ...] | None = None, dtype: str | None = None) -> np.ndarray:
    """The array stored in the IDX file ``path``, in native byte order.

    ``shape`` (``None`` entries match any size) and ``dtype`` (a NumPy dtype name such as ``"uint8"``) are
    checked when given; a mismatch raises :class:`IDXError` naming the file, the field and both values.
    """
    path = Path(path)
    data = read_idx_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise IDXError(f"{path}: not an IDX file: magic number {data[:4].hex() or '(empty)'} does not start with "
                       "0000 (expected e.g. 00000803 for images, 00000801 for labels)")
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        raise IDXError(f"{path}: magic number {data[:4].hex()}: unknown data type code 0x{code:02x} "
                       f"(valid: {', '.join(f'0x{c:02x}' for c in IDX_DTYPES)})")
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise IDXError(f"{path}: header truncated or ndim={ndim} invalid ({len(data)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    item = np.dtype(IDX_DTYPES[code])
    expected_bytes = header + int(np.prod(dims, dtype=np.int64)) * item.itemsize
    if len(data) != expected_bytes:
        raise IDXError(f"{path}: header says shape {dims} of {item.name} ({expected_bytes} bytes with the header), "
                       f"but the file holds {len(data)} bytes")
    if shape is not None and (len(shape) != ndim or any(s is not None and s != d for s, d in zip(shape, dims))):
        want = tuple("any" if s is None else s for s in shape)
        raise IDXError(f"{path}: shape {dims} does not match the expected {want}")
    if dtype is not None and item.newbyteorder("=") != np.dtype(dtype):
        raise IDXError(f"{path}: data type {item.newbyteorder('=').name} does not match the expected {dtype}")
    return np.frombuffer(data, dtype=item, offset=header).reshape(dims).astype(item.newbyteorder("="))
