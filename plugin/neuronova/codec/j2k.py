"""JPEG 2000 lossless (DICOM 1.2.840.10008.1.2.4.90) through imagecodecs / OpenJPEG.

DICOM wants a raw J2K codestream (``codecformat='J2K'``, not a JP2 file).
``level=0`` with ``reversible=True`` selects the 5/3 reversible wavelet without
rate allocation, i.e. lossless. ``mct=False`` keeps the samples as given (no RCT),
so the Photometric Interpretation stays valid. Unlike OpenJPH, OpenJPEG can
declare the real sample precision, so Bits Stored goes into the codestream.
"""

from __future__ import annotations

import numpy as np
from pydicom.uid import JPEG2000Lossless

from . import CodecUnavailable

try:
    import imagecodecs
except ImportError as error:  # reported precisely by missing()
    imagecodecs = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

NAME = "j2k"
TRANSFER_SYNTAX = JPEG2000Lossless


def missing() -> str | None:
    """Say what is missing for this backend to work, or None when it works."""
    if imagecodecs is None:
        return f"JPEG 2000 needs the Python package 'imagecodecs' (import failed: {_IMPORT_ERROR})"
    codec = getattr(imagecodecs, "JPEG2K", None)
    if codec is None or not getattr(codec, "available", False):
        return (
            f"JPEG 2000 needs imagecodecs built with OpenJPEG; imagecodecs "
            f"{getattr(imagecodecs, '__version__', '?')} has no jpeg2k_encode"
        )
    return None


def is_available() -> bool:
    return missing() is None


def encode(frame: np.ndarray, bits_stored: int | None = None) -> bytes:
    """Encode one frame (H x W, or H x W x 3 interleaved) as a lossless J2K codestream."""
    reason = missing()
    if reason:
        raise CodecUnavailable(reason)
    return imagecodecs.jpeg2k_encode(
        frame,
        level=0,
        codecformat="J2K",
        reversible=True,
        mct=False,
        bitspersample=bits_stored,
        numthreads=1,
    )


def decode(codestream: bytes) -> np.ndarray:
    """Decode a codestream to H x W or H x W x samples (interleaved)."""
    reason = missing()
    if reason:
        raise CodecUnavailable(reason)
    return imagecodecs.jpeg2k_decode(codestream, numthreads=1)
