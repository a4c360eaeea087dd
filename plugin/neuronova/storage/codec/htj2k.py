"""HTJ2K lossless (DICOM 1.2.840.10008.1.2.4.201) through imagecodecs / OpenJPH.

Lossless needs ``level=0`` and ``reversible=True`` (any level above 0 quantizes).
OpenJPH applies its colour transform (RCT) to any 3-sample input unless told not
to, so the caller decides explicitly: ``rct=True`` only where the dataset will
declare YBR_RCT.

OpenJPH declares the full sample size (16 bits for 12-bit data); imagecodecs offers
no way to declare Bits Stored, so callers clear the unused high bits first.
"""

from __future__ import annotations

import numpy as np
from pydicom.uid import HTJ2KLossless

from . import CodecUnavailable, imagecodecs, missing_in_imagecodecs

NAME = "htj2k"
TRANSFER_SYNTAX = HTJ2KLossless


def missing() -> str | None:
    """Say what is missing for this backend to work, or None when it works."""
    return missing_in_imagecodecs(imagecodecs, "HTJ2K", "HTJ2K", "OpenJPH", "htj2k_encode")


def is_available() -> bool:
    return missing() is None


def encode(frame: np.ndarray, bits_stored: int | None = None, rct: bool = False) -> bytes:
    """Encode one frame (H x W, or H x W x 3 interleaved) as a lossless HTJ2K codestream.

    ``bits_stored`` is accepted for symmetry with the J2K backend; OpenJPH always
    declares the dtype's full width. ``rct`` applies the reversible colour transform.
    """
    reason = missing()
    if reason:
        raise CodecUnavailable(reason)
    return imagecodecs.htj2k_encode(frame, level=0, reversible=True, rgb=rct)


def decode(codestream: bytes) -> np.ndarray:
    """Decode a codestream to H x W or H x W x samples (interleaved; RCT undone)."""
    reason = missing()
    if reason:
        raise CodecUnavailable(reason)
    return imagecodecs.htj2k_decode(codestream, planar=False)

