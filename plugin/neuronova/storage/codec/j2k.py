"""JPEG 2000 lossless (DICOM 1.2.840.10008.1.2.4.90) through imagecodecs / OpenJPEG.

DICOM wants a raw J2K codestream (``codecformat='J2K'``, not a JP2 file).
``level=0`` with ``reversible=True`` selects the 5/3 reversible wavelet without
rate allocation, i.e. lossless. The colour transform (``mct``, reversible here:
RCT) is the caller's choice, as it must match the declared Photometric
Interpretation (YBR_RCT). Unlike OpenJPH, OpenJPEG can declare the real sample
precision, so Bits Stored goes into the codestream. Frames are parallelised by the
caller, hence one OpenJPEG thread.
"""

from __future__ import annotations

import numpy as np
from pydicom.uid import JPEG2000Lossless

from . import CodecUnavailable, imagecodecs, missing_in_imagecodecs

NAME = "j2k"
TRANSFER_SYNTAX = JPEG2000Lossless


def missing() -> str | None:
    """Say what is missing for this backend to work, or None when it works."""
    return missing_in_imagecodecs(imagecodecs, "JPEG 2000", "JPEG2K", "OpenJPEG", "jpeg2k_encode")


def is_available() -> bool:
    return missing() is None


def encode(frame: np.ndarray, bits_stored: int | None = None, rct: bool = False) -> bytes:
    """Encode one frame (H x W, or H x W x 3 interleaved) as a lossless J2K codestream.

    ``rct`` applies the reversible colour transform to 3-sample frames.
    """
    reason = missing()
    if reason:
        raise CodecUnavailable(reason)
    return imagecodecs.jpeg2k_encode(
        frame,
        level=0,
        codecformat="J2K",
        reversible=True,
        mct=rct,
        bitspersample=bits_stored,
        numthreads=1,
    )


def decode(codestream: bytes) -> np.ndarray:
    """Decode a codestream to H x W or H x W x samples (interleaved; RCT undone)."""
    reason = missing()
    if reason:
        raise CodecUnavailable(reason)
    return imagecodecs.jpeg2k_decode(codestream, numthreads=1)

