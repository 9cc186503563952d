"""Reader for gzip-compressed IDX files (the MNIST / Fashion-MNIST format).

The header (magic, dtype code, dimension sizes) is checked against the number
of bytes that follow, and the payload is read straight into a preallocated
array: no intermediate ``bytes`` copy, uint8 stays uint8. Every failure
(missing file, truncated gzip, wrong counts) becomes a `DataError` naming the
file, never a zlib or EOFError traceback.
"""
from __future__ import annotations

import gzip
import io
import struct
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

# IDX type codes -> big-endian numpy dtypes
_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_REDOWNLOAD = "the file is damaged; re-download it (or reinstall: apt-get install --reinstall dataset-fashion-mnist)"


def read_idx(path: str | Path) -> np.ndarray:
    """Read one ``*.gz`` IDX file into a native-endian array of the declared shape."""
    p = Path(path)
    try:
        with gzip.open(p, "rb") as f:
            shape, dtype = _read_header(f, p)
            out = np.empty(shape, dtype=dtype)
            _read_exactly(f, out, p)
            if f.read(1):
                raise DataError(str(p), f"more data than the IDX header declares (shape {shape}); {_REDOWNLOAD}")
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(str(p), "file not found") from None
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(str(p), f"truncated or corrupt gzip data ({exc}); {_REDOWNLOAD}") from None
    except OSError as exc:
        raise DataError(str(p), f"cannot read file: {exc}") from None
    return out.astype(out.dtype.newbyteorder("="), copy=False)


def _read_header(f: io.BufferedIOBase, p: Path) -> tuple[tuple[int, ...], str]:
    head = f.read(4)
    if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] not in _DTYPES or head[3] == 0:
        raise DataError(str(p), f"not an IDX file (magic bytes {head.hex() or 'missing'}); expected 0x0000 followed "
                                f"by a type code and the number of dimensions")
    ndim = head[3]
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(str(p), f"IDX header cut short (expected {ndim} dimension sizes); {_REDOWNLOAD}")
    return tuple(struct.unpack(f">{ndim}I", dims)), _DTYPES[head[2]]


def _read_exactly(f: io.BufferedIOBase, out: np.ndarray, p: Path) -> None:
    """Fill `out` from `f`; a short read means the header promises more than the file has."""
    view = out.reshape(-1).view(np.uint8).data  # a writable memoryview of the bytes
    got = 0
    while got < len(view):
        n = f.readinto(view[got:])
        if not n:
            raise DataError(str(p), f"IDX header declares shape {out.shape} ({len(view)} bytes of data) but the file "
                                    f"holds only {got}; {_REDOWNLOAD}")
        got += n
