"""Orthanc's image routes for HTJ2K frames, which Orthanc 1.10 cannot decode: pure pixel logic.

Reproduces what Orthanc 1.10.1 does once it has decoded a frame (OrthancRestResources.cpp,
DicomImageDecoder.cpp, ImageProcessing.cpp), so that ``/preview``, ``/rendered``,
``/image-uint8``, ``/image-uint16`` and ``/image-int16`` of an HTJ2K instance answer what the
core answers for the same instance stored uncompressed:

* decoding gives Orthanc's pixel formats: Grayscale8 (8 bits stored, unsigned), Grayscale16,
  SignedGrayscale16, RGB24 or RGB48 (palette colour through its lookup table, YBR to RGB);
* ``image-uint8`` / ``-uint16`` / ``-int16`` clamp grayscale values to the type's range and
  refuse colour (415); MONOCHROME1 is not inverted;
* ``preview`` stretches grayscale min..max to 0..255 (rounded), inverts MONOCHROME1, shows
  colour as is (16-bit colour shifted to 8 bits);
* ``rendered`` applies Rescale Slope/Intercept and the window (tags, per-frame functional
  groups, else 2^BitsStored, or ``window-center`` / ``window-width``), in float32 exactly as
  Orthanc does, inverts MONOCHROME1, resizes (nearest neighbour) to ``width`` / ``height``,
  smoothing first (5x5 Gaussian) with ``smooth`` when shrinking;
* the Accept header picks PNG (default), JPEG (``quality``, 1-100, 8-bit modes only) or PAM,
  with Orthanc's content negotiation.

Orthanc answers its own quirks with statuses, and so does this module: 404 for an unknown frame,
a malformed window or size argument, or no acceptable format; 415 for an undecodable image, a
malformed ``quality`` or ``smooth``, or a colour image in a raw grayscale mode.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from io import BytesIO

import imagecodecs
import numpy as np
from pydicom import Dataset, dcmread
from pydicom.encaps import get_frame
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, convert_color_space
from pydicom.uid import HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL

from .codec import htj2k
from .errors import BadRequest, NeuroNovaError, NotFound

HTJ2K_SYNTAXES = frozenset({HTJ2K, HTJ2KLossless, HTJ2KLosslessRPCL})

PNG, JPEG, PAM = "image/png", "image/jpeg", "image/x-portable-arbitrarymap"
# Registration order matters: on a tie Orthanc keeps the first handler (PNG for "*/*").
FORMATS = (PNG, JPEG, PAM)

PREVIEW, UINT8, UINT16, INT16 = "preview", "image-uint8", "image-uint16", "image-int16"
MODES = (PREVIEW, UINT8, UINT16, INT16)
_RANGES = {UINT8: (np.uint8, 0, 255), UINT16: (np.uint16, 0, 65535), INT16: (np.int16, -32768, 32767)}
RT_DOSE_STORAGE = "1.2.840.10008.5.1.4.1.1.481.2"


class UnsupportedImage(NeuroNovaError):
    """What Orthanc answers with 415: an image it cannot decode or convert, a malformed argument."""

    http_status = 415


# ---------------------------------------------------------------------------
# Decoding


def frame_count(dataset: Dataset) -> int:
    return int(dataset.get("NumberOfFrames", 1) or 1)


def decode_frame(dicom: bytes, frame: int, dataset: Dataset | None = None) -> tuple[np.ndarray, Dataset]:
    """Decode one frame (numbered from 0) of an HTJ2K instance; return (pixels, dataset)."""
    dataset = dataset if dataset is not None else dcmread(BytesIO(dicom))
    frames = frame_count(dataset)
    if not 0 <= frame < frames:
        raise NotFound(f"frame {frame} does not exist: the instance has {frames} frame(s), numbered from 0")
    try:
        codestream = get_frame(dataset.PixelData, frame, number_of_frames=frames)
        return htj2k.decode(codestream), dataset
    except Exception as error:
        raise UnsupportedImage(f"cannot decode frame {frame} of this HTJ2K instance: {error}") from None


def orthanc_image(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """The decoded frame in the pixel format Orthanc's decoder hands to its image routes.

    H x W uint8 (Grayscale8), uint16 (Grayscale16) or int16 (SignedGrayscale16); H x W x 3
    uint8 (RGB24) or uint16 (RGB48).
    """
    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    bits_stored = int(dataset.get("BitsStored", 0) or dataset.get("BitsAllocated", 8) or 8)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, dataset)
        if bits_stored <= 8 and rgb.dtype.itemsize > 1:
            # Orthanc: each 16-bit entry shifted by (bits used in the LUT - 8)
            lut_bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
            rgb = rgb >> max(lut_bits - 8, 0)
            return rgb.astype(np.uint8)
        return rgb.astype(np.uint8 if rgb.dtype.itemsize == 1 else np.uint16)
    if pixels.ndim == 3:
        if photometric in ("YBR_FULL", "YBR_FULL_422"):
            pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
        # YBR_RCT / YBR_ICT: the decoder has undone the colour transform already
        return pixels.astype(np.uint8 if pixels.dtype.itemsize == 1 else np.uint16, copy=False)
    signed = int(dataset.get("PixelRepresentation", 0) or 0) == 1
    if signed:
        return pixels.astype(np.int16, copy=False)
    if int(dataset.get("BitsAllocated", 16) or 16) <= 8:
        return pixels.astype(np.uint8, copy=False)
    return pixels.astype(np.uint16, copy=False)


def is_color(image: np.ndarray) -> bool:
    return image.ndim == 3


def photometric_of(dataset: Dataset) -> str:
    return str(dataset.get("PhotometricInterpretation", "MONOCHROME2")).strip()


# ---------------------------------------------------------------------------
# preview, image-uint8, image-uint16, image-int16


def extract(image: np.ndarray, mode: str, invert: bool = False) -> np.ndarray:
    """Orthanc's ApplyExtractionMode: the image a route encodes."""
    if mode == PREVIEW:
        result = preview_image(image)
    elif mode in _RANGES:
        if is_color(image):
            raise UnsupportedImage(f"{mode} is only available for grayscale images")
        dtype, low, high = _RANGES[mode]
        result = np.clip(image.astype(np.int32), low, high).astype(dtype)
    else:
        raise ValueError(f"unknown extraction mode {mode!r}")
    if invert:  # Orthanc inverts 8-bit images only, after the conversion
        result = 255 - result
    return result


def preview_image(image: np.ndarray) -> np.ndarray:
    """Orthanc's PreviewDecodedImage: colour as is (16 bits shifted to 8), grayscale stretched
    from its min..max to 0..255, computed in float32 and rounded half away from zero."""
    if is_color(image):
        return (image >> 8).astype(np.uint8) if image.dtype.itemsize > 1 else image
    low, high = int(image.min()), int(image.max())
    if low == high:
        return np.zeros(image.shape, np.uint8)
    scaling = np.float32(255.0) / np.float32(high - low)
    values = scaling * image.astype(np.float32) + np.float32(-low) * scaling
    return np.clip(np.floor(values.astype(np.float64) + 0.5), 0, 255).astype(np.uint8)


def to_preview(pixels: np.ndarray, dataset: Dataset) -> np.ndarray:
    """The 8-bit image Orthanc's /preview shows for these decoded pixels."""
    return extract(orthanc_image(pixels, dataset), PREVIEW, photometric_of(dataset) == "MONOCHROME1")


# ---------------------------------------------------------------------------
# rendered


@dataclass(frozen=True)
class RenderArguments:
    window_center: float | None = None
    window_width: float | None = None
    width: int = 0  # 0: not given
    height: int = 0
    smooth: bool = False

    @classmethod
    def parse(cls, query: dict[str, str]) -> "RenderArguments":
        """Parse in Orthanc's order; a malformed window or size is a 404 there, a malformed smooth a 415."""
        width_ = _double(query, "window-width")
        center = _double(query, "window-center")
        width, height = _size(query, "width"), _size(query, "height")
        smooth = False
        if "smooth" in query:
            value = query["smooth"]
            if value not in ("true", "false", "1", "0"):
                raise UnsupportedImage(f"smooth: a Boolean value is expected, got {value!r}")
            smooth = value in ("true", "1")
        return cls(center, width_, width, height, smooth)


_DOUBLE = re.compile(r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")


def _double(query: dict[str, str], name: str) -> float | None:
    if name not in query:
        return None
    if not _DOUBLE.match(query[name]):
        raise NotFound(f"{name}: bad value {query[name]!r}")
    return float(query[name])


def _size(query: dict[str, str], name: str) -> int:
    if name not in query:
        return 0
    if not _INTEGER.match(query[name]):
        raise NotFound(f"{name}: bad value {query[name]!r}")
    value = int(query[name])
    if value < 0:
        raise NotFound(f"{name}: cannot be negative")
    return value


def _first_number(value) -> float | None:
    """Orthanc's ParseFirstDouble: the first value of a possibly multi-valued DS."""
    if value is None:
        return None
    text = str(value[0] if isinstance(value, (list, tuple, MultiValue)) else value)
    try:
        return float(text.strip())
    except ValueError:
        return None


def _single_number(value) -> float | None:
    """Orthanc's ParseDouble: a single value only."""
    if value is None or isinstance(value, (list, tuple, MultiValue)):
        return None
    try:
        return float(str(value).strip())
    except ValueError:
        return None


def _per_frame_item(dataset: Dataset, frame: int, sequence: str) -> Dataset | None:
    groups = dataset.get("PerFrameFunctionalGroupsSequence")
    if not groups or frame >= len(groups):
        return None
    inner = groups[frame].get(sequence)
    return inner[0] if inner else None


def default_windowing(dataset: Dataset, frame: int) -> tuple[float, float]:
    """(center, width): Orthanc's ParsedDicomFile::GetDefaultWindowing."""
    for source in (dataset, _per_frame_item(dataset, frame, "FrameVOILUTSequence")):
        if source is None:
            continue
        center, width = _first_number(source.get("WindowCenter")), _first_number(source.get("WindowWidth"))
        if center is not None and width is not None:
            return center, width
    bits = int(dataset.get("BitsStored", 0) or 0) or 8
    width = float(1 << bits)
    return width / 2.0, width


def rescale(dataset: Dataset, frame: int) -> tuple[float, float]:
    """(intercept, slope): Orthanc's ParsedDicomFile::GetRescale (none for RT Dose)."""
    if str(dataset.get("SOPClassUID", "")) == RT_DOSE_STORAGE:
        return 0.0, 1.0
    for source in (dataset, _per_frame_item(dataset, frame, "PixelValueTransformationSequence")):
        if source is None:
            continue
        intercept = _single_number(source.get("RescaleIntercept"))
        slope = _single_number(source.get("RescaleSlope"))
        if intercept is not None and slope is not None:
            return intercept, slope
    return 0.0, 1.0


def target_size(width: int, height: int, arguments: RenderArguments) -> tuple[int, int]:
    """Orthanc's size of the rendered image: the requested box, aspect ratio kept (float32)."""
    if width == 0 or height == 0:
        return width, height
    ratio = np.float32(1)
    if arguments.width and arguments.height:
        ratio = min(np.float32(arguments.width) / np.float32(width), np.float32(arguments.height) / np.float32(height))
    elif arguments.width:
        ratio = np.float32(arguments.width) / np.float32(width)
    elif arguments.height:
        ratio = np.float32(arguments.height) / np.float32(height)
    return _iround(np.float32(ratio) * np.float32(width)), _iround(np.float32(ratio) * np.float32(height))


def _iround(value) -> int:
    """boost::math::iround: half away from zero."""
    value = float(value)
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


def render(image: np.ndarray, dataset: Dataset, frame: int, arguments: RenderArguments) -> np.ndarray:
    """Orthanc's RenderedFrameHandler: the 8-bit image (H x W, or H x W x 3) /rendered encodes."""
    height, width = image.shape[:2]
    target_width, target_height = target_size(width, height, arguments)
    resize = (target_width, target_height) != (width, height)
    shrink = target_width < width or target_height < height
    if is_color(image):
        if image.dtype.itemsize > 1:
            if resize:  # Orthanc resizes and smooths RGB24 only
                raise UnsupportedImage("16-bit colour images cannot be resized")
            return preview_image(image)
        if resize:
            if arguments.smooth and shrink:
                image = smooth_gaussian_5x5(image)
            image = resize_nearest(image, target_width, target_height)
        return image

    intercept, slope = rescale(dataset, frame)
    center, window = default_windowing(dataset, frame)
    if arguments.window_width is not None:
        window = arguments.window_width
    if arguments.window_center is not None:
        center = arguments.window_center
    if window <= 1.0:  # avoid divisions by zero
        window = 1.0
    if abs(slope) <= 0.0001:
        slope = 0.0001
    scaling = 255.0 * slope / window
    offset = (intercept - center + window / 2.0) / slope
    a = np.float32(scaling)
    b = np.float32(offset) * a  # ShiftScale rewrites (x + offset) * scaling as a * x + b, in float32
    values = a * image.astype(np.float32) + b
    rendered = np.where(values >= 255, 255, np.where(values <= 0, 0, np.floor(values))).astype(np.uint8)
    if resize:
        if arguments.smooth and shrink:
            rendered = smooth_gaussian_5x5(rendered)
        rendered = resize_nearest(rendered, target_width, target_height)
    if photometric_of(dataset) == "MONOCHROME1":
        rendered = 255 - rendered
    return rendered


def resize_nearest(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """ImageProcessing::Resize: nearest neighbour, source = floor((x + 0.5) * scale) in float32."""
    source_height, source_width = image.shape[:2]
    if width == 0 or height == 0:
        return np.zeros((height, width) + image.shape[2:], image.dtype)

    def lookup(target: int, source: int) -> np.ndarray:
        scale = np.float32(source) / np.float32(target)
        positions = np.floor((np.arange(target, dtype=np.float32) + np.float32(0.5)) * scale).astype(np.int64)
        return np.clip(positions, 0, source - 1)

    return np.ascontiguousarray(image[lookup(height, source_height)][:, lookup(width, source_width)])


def smooth_gaussian_5x5(image: np.ndarray) -> np.ndarray:
    """ImageProcessing::SmoothGaussian5x5 without rounding on 8-bit images.

    Orthanc convolves in float32 with the kernel 1-4-6-4-1 both ways, borders replicated,
    then truncates sum / 256: every intermediate value is an integer below 2^24, so integer
    arithmetic gives the very same result.
    """
    kernel = (1, 4, 6, 4, 1)
    work = image.astype(np.int64)
    padded = np.pad(work, ((0, 0), (2, 2)) + ((0, 0),) * (work.ndim - 2), mode="edge")
    horizontal = sum(k * padded[:, i:i + work.shape[1]] for i, k in enumerate(kernel))
    padded = np.pad(horizontal, ((2, 2), (0, 0)) + ((0, 0),) * (work.ndim - 2), mode="edge")
    total = sum(k * padded[i:i + work.shape[0]] for i, k in enumerate(kernel))
    return np.clip(total // 256, 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------
# Content negotiation and encoding


def negotiate(accept: str | None) -> str | None:
    """Orthanc's HttpContentNegociation over PNG, JPEG, PAM: the chosen type, or None (Orthanc: 404).

    The most specific media range wins, then the highest quality; on a tie the first registered
    type (PNG) is kept. A missing header counts as ``*/*``; a quality outside 0..1 is a 415.
    """
    best: tuple[int, float] | None = None
    chosen = None
    for media_range in (accept if accept is not None else "*/*").split(","):
        tokens = media_range.split(";")
        if "/" not in tokens[0]:
            continue
        kind, subtype = (part.strip() for part in tokens[0].split("/", 1))
        quality = 1.0
        for parameter in tokens[1:]:
            key, _, value = parameter.partition("=")
            if key.strip() == "q":
                value = value.strip().strip('"')
                try:
                    quality = float(value)
                except ValueError:
                    quality = -1.0
                if not 0.0 <= quality <= 1.0:
                    raise UnsupportedImage(f"Accept: quality out of range (0..1): {value!r}")
        level = 0 if (kind, subtype) == ("*", "*") else 1 if subtype == "*" else 2
        for mime in FORMATS:
            mime_kind, mime_subtype = mime.split("/")
            if (kind, subtype) == ("*", "*") or (subtype == "*" and kind == mime_kind) or \
                    (kind, subtype) == (mime_kind, mime_subtype):
                if best is None or best < (level, quality):
                    best, chosen = (level, quality), mime
    return chosen


def jpeg_quality(query: dict[str, str]) -> int:
    """?quality=, 1..100, default 90; Orthanc checks it whatever the format (415 if malformed)."""
    value = query.get("quality", "90")
    if not re.fullmatch(r"\d+", value.strip()) or not 1 <= int(value) <= 100:
        raise UnsupportedImage(f"quality: must be a number between 1 and 100, got {value!r}")
    return int(value)


def encode(image: np.ndarray, mime: str, quality: int = 90) -> bytes:
    """PNG (8/16-bit grayscale, signed as two's complement; RGB), JPEG (8-bit) or PAM."""
    image = np.ascontiguousarray(image)
    if mime == PNG:
        return imagecodecs.png_encode(image.view(np.uint16) if image.dtype == np.int16 else image)
    if mime == JPEG:
        if image.dtype != np.uint8:
            raise NotFound("JPEG is only available for 8-bit images")
        return imagecodecs.jpeg8_encode(image, level=quality)
    if mime == PAM:
        return to_pam(image)
    raise ValueError(f"unknown image type {mime!r}")


def to_pam(image: np.ndarray) -> bytes:
    """Orthanc's PamWriter: P7 header, samples big-endian."""
    height, width = image.shape[:2]
    depth = image.shape[2] if image.ndim == 3 else 1
    maxval = 255 if image.dtype.itemsize == 1 else 65535
    tupltype = "RGB" if depth == 3 else "GRAYSCALE"
    header = f"P7\nWIDTH {width}\nHEIGHT {height}\nDEPTH {depth}\nMAXVAL {maxval}\nTUPLTYPE {tupltype}\nENDHDR\n"
    data = image.astype(image.dtype.newbyteorder(">"), copy=False) if image.dtype.itemsize > 1 else image
    return header.encode("ascii") + np.ascontiguousarray(data).tobytes()


def from_png(png: bytes) -> np.ndarray:
    return imagecodecs.png_decode(png)


# ---------------------------------------------------------------------------
# Whole routes on an HTJ2K instance


def answer_image(dicom: bytes, frame: int, mode: str, query: dict[str, str], accept: str | None) -> tuple[bytes, str]:
    """(body, content type) of /preview, /image-uint8, /image-uint16, /image-int16 or /rendered
    ("rendered" as mode) for one frame of an HTJ2K instance, checks in Orthanc's order."""
    pixels, dataset = decode_frame(dicom, frame)
    image = orthanc_image(pixels, dataset)
    if mode == "rendered":
        image = render(image, dataset, frame, RenderArguments.parse(query))
    quality = jpeg_quality(query)
    mime = acceptable(accept, mode)
    if mode != "rendered":
        image = extract(image, mode, invert=mode == PREVIEW and photometric_of(dataset) == "MONOCHROME1")
    return encode(image, mime, quality), mime


def acceptable(accept: str | None, mode: str) -> str:
    """The negotiated type for this route; 404 (as Orthanc) when none fits."""
    mime = negotiate(accept)
    if mime is None:
        raise NotFound("none of the accepted types is available: image/png, image/jpeg, "
                       "image/x-portable-arbitrarymap")
    if mime == JPEG and mode in (UINT16, INT16):
        raise NotFound("JPEG is only available for 8-bit images (preview, rendered, image-uint8)")
    return mime


# ---------------------------------------------------------------------------
# matlab and numpy (Orthanc answers 400 for every failure there)


def to_matlab(image: np.ndarray) -> str:
    """ImageAccessor::ToMatlabString: rows separated by "; "; colour reshaped and permuted."""
    if is_color(image):
        height, width = image.shape[:2]
        values = "".join(f"{value} " for value in image.reshape(-1).tolist())
        return f"double(permute(reshape([ {values}], [ 3 {height} {width} ]), [ 3 2 1 ]))"  # as Orthanc writes it
    rows = ("".join(f"{value} " for value in row) for row in image.tolist())
    return "double([ " + "; ".join(rows) + "])"


def matlab_frame(dicom: bytes, frame: int) -> str:
    """Orthanc's /matlab of one frame of an HTJ2K instance."""
    pixels, dataset = _decode_for_400(dicom, frame, dcmread(BytesIO(dicom)))
    return to_matlab(orthanc_image(pixels, dataset))


def numpy_array(dicom: bytes, frame: int | None, rescaled: bool) -> np.ndarray:
    """Orthanc's /numpy: one frame (H, W, C) or every frame (F, H, W, C); grayscale rescaled to
    float32 (slope * value + intercept) unless ``rescaled`` is off."""
    dataset = dcmread(BytesIO(dicom))
    indices = [frame] if frame is not None else range(frame_count(dataset))
    arrays = []
    for index in indices:
        pixels, _ = _decode_for_400(dicom, index, dataset)
        image = orthanc_image(pixels, dataset)
        if rescaled and not is_color(image):
            intercept, slope = rescale(dataset, index)
            image = np.float32(slope) * image.astype(np.float32) + np.float32(intercept)
        arrays.append(image if image.ndim == 3 else image[:, :, np.newaxis])
    return arrays[0] if frame is not None else np.stack(arrays)


def _decode_for_400(dicom: bytes, frame: int, dataset: Dataset) -> tuple[np.ndarray, Dataset]:
    try:
        return decode_frame(dicom, frame, dataset)
    except NeuroNovaError as error:
        raise BadRequest(str(error)) from None


def encode_numpy(array: np.ndarray, compress: bool) -> bytes:
    buffer = BytesIO()
    if compress:
        np.savez_compressed(buffer, array)
    else:
        np.save(buffer, array)
    return buffer.getvalue()


def parse_boolean(query: dict[str, str], name: str, default: bool) -> bool:
    """Orthanc's GetBooleanArgument: true/false/1/0 (400 otherwise)."""
    if name not in query:
        return default
    value = query[name]
    if value in ("", "true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise BadRequest(f"{name}: a Boolean value is expected, got {value!r}")
