"""Reader (and a small writer) for the IDX format used by MNIST and Fashion-MNIST.

An IDX file is::

    0x00 0x00 <dtype code> <ndim>      magic: two zero bytes, type, number of dims
    ndim x uint32, big-endian           the size of each dimension
    prod(dims) x item, big-endian       the payload, C order

with dtype codes 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32, 0x0D float32,
0x0E float64. Files may be gzip-compressed; this is detected from the content
(the gzip magic bytes), not from the file name.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from netshrink.errors import InvalidInputError

__all__ = ["read_idx", "write_idx", "IDX_DTYPES"]

#: IDX dtype code -> big-endian numpy dtype of the payload.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"IDX file {path} does not exist.") from None
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInputError(
            f"IDX file {path} is gzip-compressed but cannot be decompressed ({exc}); "
            "the file is truncated or corrupt - download or install it again."
        ) from None


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    Returns an array of shape ``dims`` (as stored in the header) whose dtype is
    the native-endian version of the stored one (uint8, int8, int16, int32,
    float32 or float64). The array owns its memory and is writable.

    Raises InvalidInputError naming the file when the magic number, dtype code
    or dimension header is invalid or the payload is shorter or longer than the
    header announces; FileNotFoundError if ``path`` does not exist.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise InvalidInputError(
            f"IDX file {path} is only {len(data)} bytes long, too short for the 4-byte magic number; "
            "it is truncated or not an IDX file."
        )
    if data[0] != 0 or data[1] != 0:
        raise InvalidInputError(
            f"IDX file {path} has bad magic bytes {data[:4].hex()} (an IDX file starts with 0000); "
            "it is not an IDX file or is corrupt."
        )
    code, ndim = data[2], data[3]
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise InvalidInputError(
            f"IDX file {path} has unknown dtype code 0x{code:02X} (known: {known}); "
            "it is corrupt or not an IDX file."
        )
    if ndim == 0:
        raise InvalidInputError(f"IDX file {path} declares 0 dimensions; an IDX array has at least one.")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise InvalidInputError(
            f"IDX file {path} is truncated inside its header: {ndim} dimensions need "
            f"{header_len} header bytes but the file has {len(data)}."
        )
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header_len
    if actual < expected:
        raise InvalidInputError(
            f"IDX file {path} is truncated: its header announces shape {dims} of {dtype.newbyteorder('=')} "
            f"({expected} payload bytes) but only {actual} bytes follow; download or install it again."
        )
    if actual > expected:
        raise InvalidInputError(
            f"IDX file {path} is corrupt: {actual - expected} unexpected bytes follow the "
            f"{expected}-byte payload of shape {dims}."
        )
    array = np.frombuffer(data, dtype=dtype, count=int(np.prod(dims, dtype=np.int64)), offset=header_len)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike[str], array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip it when ``compress`` (default: name ends in ``.gz``).

    Supported dtypes: uint8, int8, int16, int32, float32, float64, 1 to 255 dims.
    Mainly for tests and small fixtures; the file is written in one go, not atomically.
    """
    path = Path(path)
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise InvalidInputError(
            f"cannot write dtype {array.dtype} to IDX; convert to one of "
            "uint8, int8, int16, int32, float32, float64."
        )
    if not 1 <= array.ndim <= 255:
        raise InvalidInputError(f"IDX supports 1 to 255 dimensions, got an array with {array.ndim}.")
    code = codes[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    blob = header + payload
    if compress if compress is not None else path.name.endswith(".gz"):
        blob = gzip.compress(blob, mtime=0)
    path.write_bytes(blob)
    return path
