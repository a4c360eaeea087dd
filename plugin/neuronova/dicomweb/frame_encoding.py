"""Frames asked in a lossless compressed transfer syntax other than the stored one, encoded by the
plugin's own libraries (imagecodecs: OpenJPEG, CharLS) and decoded again before they
are answered: the same pixels or no answer. The DICOMweb plugin would call Orthanc's transcoder from
the HTTP thread, which killed Orthanc here (GDCM 1.5; DCMTK's JPEG-LS encoder on a 14-bit CT)."""

from __future__ import annotations

import imagecodecs
import numpy as np
from pydicom import Dataset
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless

from ..storage.codec import j2k
from .frame_decoding import CannotDecode


def _array(frame: bytes, module: Dataset) -> np.ndarray:
    """An uncompressed little-endian frame as rows x columns (x samples, interleaved)."""
    rows, columns = int(module.Rows), int(module.Columns)
    samples = int(module.get("SamplesPerPixel", 1) or 1)
    bits = int(module.BitsAllocated)
    if bits not in (8, 16):
        raise CannotDecode(f"BitsAllocated {bits} cannot be encoded (8 or 16)")
    signed = int(module.get("PixelRepresentation", 0) or 0) == 1
    array = np.frombuffer(frame, f"<{'i' if signed else 'u'}{bits // 8}", rows * columns * samples)
    if samples == 1:
        return array.reshape(rows, columns)
    if int(module.get("PlanarConfiguration", 0) or 0) == 1:
        return np.ascontiguousarray(array.reshape(samples, rows, columns).transpose(1, 2, 0))
    return array.reshape(rows, columns, samples)


def _unsigned_grayscale(array: np.ndarray) -> None:
    if array.dtype.kind != "u" or array.ndim != 2:
        raise CannotDecode("this encoder takes unsigned grayscale frames only")


def _jpegls_lossless(array: np.ndarray, bits_stored: int) -> tuple[bytes, np.ndarray]:
    _unsigned_grayscale(array)
    codestream = imagecodecs.jpegls_encode(array, level=0)
    return codestream, imagecodecs.jpegls_decode(codestream)


def _j2k_lossless(array: np.ndarray, bits_stored: int) -> tuple[bytes, np.ndarray]:
    codestream = j2k.encode(array, bits_stored, rct=False)
    return codestream, j2k.decode(codestream)


#: Lossless target transfer syntax -> encoder returning (codestream, its decoding)
ENCODERS = {JPEG2000Lossless: _j2k_lossless, JPEGLSLossless: _jpegls_lossless}
# Not JPEG lossless: libjpeg-turbo 3 (imagecodecs) inside Orthanc, which links libjpeg 6.2, killed Orthanc
# (measured, as for 12-bit JPEG decoding).


def encode_frame(frame: bytes, module: Dataset, syntax: str) -> bytes:
    """The frame in `syntax`, verified by decoding it. Raises CannotDecode (the client's next choice)."""
    array = _array(frame, module)
    bits_stored = int(module.get("BitsStored", module.BitsAllocated) or module.BitsAllocated)
    if array.dtype.kind == "u" and int(array.max(initial=0)) >= 1 << bits_stored:
        raise CannotDecode("values above Bits Stored: no lossless encoding declares them")
    try:
        codestream, decoded = ENCODERS[syntax](array, bits_stored)
    except CannotDecode:
        raise
    except Exception as error:
        raise CannotDecode(f"cannot encode this frame as {syntax}: {type(error).__name__}: {error}") from None
    if decoded.shape != array.shape or not np.array_equal(decoded.astype(array.dtype, copy=False), array):
        raise CannotDecode(f"the {syntax} encoding of this frame does not decode to the same pixels")
    return codestream
