"""Previews of HTJ2K instances, which Orthanc 1.10 cannot decode, rendered as Orthanc renders its own.

Orthanc's preview: colour images as they are (16-bit colour shifted to 8 bits); grayscale
stretched from the frame's min..max to 0..255, inverted for MONOCHROME1.
"""

from __future__ import annotations

from io import BytesIO

import imagecodecs
import numpy as np
from pydicom import dcmread
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.uid import HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL

from .codec import htj2k
from .errors import BadRequest, NotFound

HTJ2K_SYNTAXES = frozenset({HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL})


def decode_frame(dicom: bytes, frame: int) -> tuple[np.ndarray, object]:
    """Decode one frame of an HTJ2K instance; return (pixels, dataset)."""
    dataset = dcmread(BytesIO(dicom))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    if not 0 <= frame < frames:
        raise NotFound(f"frame {frame} does not exist: the instance has {frames} frame(s), numbered from 0")
    codestream = get_frame(dataset.PixelData, frame, number_of_frames=frames)
    return htj2k.decode(codestream), dataset


def to_preview(pixels: np.ndarray, dataset) -> np.ndarray:
    """The 8-bit image Orthanc's preview would show for these decoded pixels."""
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        pixels = apply_color_lut(pixels, dataset)
    elif photometric in ("YBR_FULL", "YBR_FULL_422"):
        pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
    if pixels.ndim == 3:
        return (pixels >> 8).astype(np.uint8) if pixels.dtype.itemsize > 1 else pixels.astype(np.uint8)
    low, high = int(pixels.min()), int(pixels.max())
    if low == high:
        image = np.zeros(pixels.shape, np.uint8)
    else:
        scaled = (pixels.astype(np.float32) - low) * (255.0 / (high - low))
        image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return 255 - image if photometric == "MONOCHROME1" else image


def render_preview(dicom: bytes, frame: int, accept: str = "") -> tuple[bytes, str]:
    """(image bytes, content type) for one frame: PNG, or JPEG when the client asks for it only."""
    try:
        pixels, dataset = decode_frame(dicom, frame)
    except NotFound:
        raise
    except Exception as error:
        raise BadRequest(f"cannot decode frame {frame} of this HTJ2K instance: {error}") from None
    image = to_preview(pixels, dataset)
    if "image/jpeg" in accept and "image/png" not in accept:
        return imagecodecs.jpeg8_encode(image, level=90), "image/jpeg"
    return imagecodecs.png_encode(image), "image/png"
