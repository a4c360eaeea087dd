"""HTJ2K lossless (DICOM 1.2.840.10008.1.2.4.201) through imagecodecs / OpenJPH.

Lossless needs ``level=0`` and ``reversible=True`` (any level above 0 quantizes).
OpenJPH applies its colour transform (RCT) to any 3-sample input unless told not
to, so the caller decides explicitly: ``rct=True`` only where the dataset will
declare YBR_RCT (the storage area's container does; the received file Orthanc
shows clients declares RGB, so codestreams sent to them must not carry it).

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



def colour_transformed(codestream) -> bool:
    """Whether the codestream's main header declares the multi-component (colour) transform: the MCT
    byte of its COD segment (ISO/IEC 15444-1 A.6.1). Only YBR_RCT may label such a codestream
    (PS3.5 8.2.4); RGB only one without it."""
    data = bytes(codestream[:4096])  # the main header comes first, and is small
    if data[:4] != b"\xff\x4f\xff\x51":  # SOC, then SIZ
        raise ValueError("not a JPEG 2000 codestream (no SOC and SIZ markers)")
    position = 2
    while position + 4 <= len(data):
        marker, length = data[position:position + 2], int.from_bytes(data[position + 2:position + 4], "big")
        if marker == b"\xff\x52":  # COD: Lcod, Scod, then SGcod (progression, layers (2 bytes), MCT)
            return position + 8 < len(data) and data[position + 8] == 1
        if marker == b"\xff\x90":  # SOT: the main header ended without COD
            break
        position += 2 + length
    raise ValueError("JPEG 2000 codestream without a COD segment in its main header")


def without_colour_transform(codestream) -> bytes:
    """The same samples in a codestream without the colour transform, checked by decoding it again."""
    frame = decode(codestream)
    recoded = encode(frame, rct=False)
    if not np.array_equal(decode(recoded), frame):
        raise ValueError("HTJ2K codestream re-encoded without the colour transform does not decode identically")
    return recoded
