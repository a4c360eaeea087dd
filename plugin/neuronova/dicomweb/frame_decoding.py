"""Frames of instances received compressed, decoded to the uncompressed little-endian bytes the
DICOMweb plugin answers for them, with the plugin's own libraries (imagecodecs: OpenJPH, OpenJPEG,
CharLS, libjpeg-turbo, liblj92; RLE by pydicom). Orthanc's own transcoder is never called: with
GDCM 1.5 it killed Orthanc for several syntaxes (measured)."""

from __future__ import annotations


import imagecodecs
import numpy as np
import pydicom
from pydicom.dataset import FileMetaDataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import (
    HTJ2K,
    UID,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from ..errors import NeuroNovaError
from ..storage.codec import htj2k, j2k

HTJ2K_SYNTAXES = frozenset({HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL})

_LOSSY_JPEG = frozenset({JPEGBaseline8Bit, JPEGExtended12Bit})


class CannotDecode(NeuroNovaError):
    """The instance's transfer syntax or pixel layout cannot be decoded here (415)."""

    http_status = 415


def _jpeg(frame: bytes, dataset: pydicom.Dataset) -> np.ndarray:
    """JPEG baseline / extended, 8 bits: libjpeg-turbo.

    Inside Orthanc, imagecodecs' libjpeg-turbo 3 shares the process with Orthanc's libjpeg 6.2:
    decoding 12-bit JPEG there killed Orthanc (measured), so 12-bit lossy JPEG is refused.
    """
    if _jpeg_precision(frame) != 8:
        raise CannotDecode(f"{_jpeg_precision(frame)}-bit lossy JPEG cannot be decoded inside Orthanc")
    # libjpeg converts YCbCr to RGB unless markers say otherwise; a DICOM "RGB" stream without
    # JFIF or Adobe marker is RGB as it stands (pydicom's rule as well).
    if _photometric(dataset) == "RGB" and not _has_colour_marker(frame):
        return imagecodecs.jpeg8_decode(frame, colorspace="RGB", outcolorspace="RGB")
    return imagecodecs.jpeg8_decode(frame)


def _jpeg_lossless(frame: bytes, dataset: pydicom.Dataset) -> np.ndarray:
    """JPEG lossless (process 14): liblj92, which needs no libjpeg (see _jpeg), any precision."""
    return imagecodecs.ljpeg_decode(frame)


def _jpeg_precision(frame: bytes) -> int:
    """Sample precision from the first SOF marker (0 if none is found)."""
    pos = 2
    while pos + 5 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return frame[pos + 4]
        if marker == 0xDA:
            break
        pos += 2 + int.from_bytes(frame[pos + 2:pos + 4], "big")
    return 0


def _has_colour_marker(frame: bytes) -> bool:
    """Whether a JFIF (APP0) or Adobe (APP14) marker precedes the scan."""
    pos = 2
    while pos + 4 <= len(frame) and frame[pos] == 0xFF:
        marker = frame[pos + 1]
        if marker == 0xDA:  # start of scan
            return False
        length = int.from_bytes(frame[pos + 2:pos + 4], "big")
        if marker == 0xE0 and frame[pos + 4:pos + 8] == b"JFIF" or marker == 0xEE and frame[pos + 4:pos + 9] == b"Adobe":
            return True
        pos += 2 + length
    return False


# transfer syntax -> frame decoder
DECODERS = {
    **{syntax: lambda frame, dataset: htj2k.decode(frame) for syntax in HTJ2K_SYNTAXES},
    JPEG2000Lossless: lambda frame, dataset: j2k.decode(frame),
    JPEG2000: lambda frame, dataset: j2k.decode(frame),
    JPEGLSLossless: lambda frame, dataset: imagecodecs.jpegls_decode(frame),
    JPEGLSNearLossless: lambda frame, dataset: imagecodecs.jpegls_decode(frame),
    JPEGBaseline8Bit: _jpeg,
    JPEGExtended12Bit: _jpeg,
    JPEGLossless: _jpeg_lossless,
    JPEGLosslessSV1: _jpeg_lossless,
}


def _photometric(dataset: pydicom.Dataset) -> str:
    return str(dataset.get("PhotometricInterpretation", "") or "").strip()


# What a frame decoder needs from the instance (frame_to_little_endian)
PIXEL_KEYWORDS = ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "Rows", "Columns",
                  "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")


def frame_to_little_endian(frame: bytes, pixel_module: pydicom.Dataset, syntax: str) -> bytes:
    """One encapsulated frame decoded to the bytes it has in the instance's Explicit VR Little Endian
    copy (a decoded copy of the whole instance), by the very same code. ``pixel_module`` holds the instance's
    PIXEL_KEYWORDS. Raises CannotDecode."""
    syntax = UID(syntax)
    single = pydicom.Dataset()
    for keyword in PIXEL_KEYWORDS:
        if keyword in pixel_module:
            setattr(single, keyword, pixel_module[keyword].value)
    single.file_meta = FileMetaDataset()
    single.file_meta.TransferSyntaxUID = syntax
    single.PixelData = encapsulate([frame])
    single["PixelData"].VR = "OB"
    single["PixelData"].is_undefined_length = True
    try:
        _decode_encapsulated(single, syntax)
        length = int(single.Rows) * int(single.Columns) * int(single.get("SamplesPerPixel", 1) or 1) * \
            (int(single.BitsAllocated) // 8)
    except NeuroNovaError:
        raise
    except Exception as error:
        raise CannotDecode(f"cannot decode this {syntax.name} frame: {type(error).__name__}: {error}") from None
    return bytes(single.PixelData[:length])


def _decode_encapsulated(dataset: pydicom.Dataset, syntax: UID) -> None:
    if syntax == RLELossless:
        dataset.decompress(as_rgb=False, generate_instance_uid=False, decoding_plugin="pydicom")
    elif syntax in DECODERS:
        _decode_pixel_data(dataset, syntax)
    else:
        raise CannotDecode(f"cannot decode {syntax.name} ({syntax}) pixel data")


def _decode_pixel_data(dataset: pydicom.Dataset, syntax: UID) -> None:
    """Replace encapsulated Pixel Data by the decoded frames and make the Image Pixel module match."""
    decode = DECODERS[syntax]
    count = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    shape = (int(dataset.Rows), int(dataset.Columns)) + ((samples,) if samples > 1 else ())
    bits_allocated = int(dataset.BitsAllocated)
    if bits_allocated not in (8, 16):
        raise CannotDecode(f"BitsAllocated {bits_allocated} is not supported (8 or 16)")
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(f"<{'i' if signed else 'u'}{bits_allocated // 8}")
    bits_stored = int(dataset.get("BitsStored", bits_allocated) or bits_allocated)
    frames = []
    for index, frame in enumerate(generate_frames(dataset.PixelData, number_of_frames=count)):
        pixels = np.asarray(decode(frame, dataset))
        if pixels.shape != shape:
            raise CannotDecode(f"frame {index + 1} decodes to {pixels.shape}, the header describes {shape}")
        frames.append(_to_container(pixels, dtype, bits_stored).tobytes())
    if len(frames) != count:
        raise CannotDecode(f"{len(frames)} frames found, NumberOfFrames says {count}")
    data = b"".join(frames)
    dataset.PixelData = data + b"\0" * (len(data) & 1)
    element = dataset["PixelData"]
    element.VR = "OB" if bits_allocated == 8 else "OW"
    element.is_undefined_length = False
    photometric = _photometric(dataset)
    if photometric in ("YBR_RCT", "YBR_ICT") or (samples == 3 and syntax in _LOSSY_JPEG):
        dataset.PhotometricInterpretation = "RGB"  # the decoder undid the colour transform
    if samples > 1:
        dataset.PlanarConfiguration = 0  # decoders hand samples over interleaved


def _to_container(pixels: np.ndarray, dtype: np.dtype, bits_stored: int) -> np.ndarray:
    """Decoded values in the dataset's pixel container; signed data coded as unsigned is sign-extended."""
    if dtype.kind == "i" and pixels.dtype.kind == "u":
        values = pixels.astype(np.int32)
        values = np.where(values >= 1 << (bits_stored - 1), values - (1 << bits_stored), values)
        return values.astype(dtype)
    return pixels.astype(dtype, copy=False)
