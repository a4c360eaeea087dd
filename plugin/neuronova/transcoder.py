"""Lossless transcoding of uncompressed DICOM instances to HTJ2K, with J2K as fallback.

This runs inside Orthanc's received-instance callback, which handles one instance
at a time, so the common case (Explicit VR Little Endian, also Deflated after
inflating) never builds a pydicom Dataset: a small walker finds the top-level
elements it needs and the output is spliced together from the original bytes
(dataset unchanged up to Pixel Data, new file meta, encapsulated Pixel Data).
Implicit VR and big-endian input need every element re-encoded, which is left to
pydicom (slower, but correct).

Colour: RGB is encoded with the reversible colour transform (RCT) and declared
YBR_RCT, as DICOM requires for a JPEG 2000 codestream using it. On real RGB
(ultrasound, secondary captures) this halves the output and encodes faster than
coding R, G and B separately; decoders (OpenJPEG, OpenJPH, pydicom, Cornerstone)
undo it and hand back RGB. YBR_FULL is already decorrelated and is coded as is.

Whatever happens, ``transcode`` returns a result: on any doubt the original bytes
object is handed back unchanged, so the instance is stored as it arrived.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from types import ModuleType

import numpy as np
import pydicom
from pydicom.encaps import encapsulate
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
)

from .codec import htj2k, j2k

log = logging.getLogger("neuronova.transcoder")


@dataclass(frozen=True)
class TranscodeSettings:
    target: str = "htj2k"  # "htj2k" | "j2k" | "none"
    verify: bool = True  # decode every encoded frame and compare with the original before accepting
    transcodable_syntaxes: frozenset[str] = frozenset(
        {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
    )
    min_pixel_bytes: int = 0  # below this PixelData size, store as is
    fallback_to_j2k: bool = True  # if HTJ2K unavailable or fails, try J2K lossless
    frame_threads: int = 2  # threads for multi-frame encoding (encoders release the GIL)


@dataclass(frozen=True)
class TranscodeResult:
    data: bytes  # what to store: new bytes, or the original object unchanged
    changed: bool
    outcome: str  # "transcoded" | "skipped" | "failed"
    reason: str  # why skipped/failed (or which backend failed before a fallback succeeded), else ""
    syntax_before: str
    syntax_after: str
    bytes_before: int
    bytes_after: int
    sop_instance_uid: str


class TranscodeError(Exception):
    """A failure whose message is already a complete, human-readable reason."""


class _Skip(Exception):
    """The instance is valid but must be stored as it arrived."""


class _SlowPath(Exception):
    """The byte-level fast path met a construct it does not handle; use pydicom."""


# ---------------------------------------------------------------------------
# Public entry point


def transcode(dicom: bytes, settings: TranscodeSettings) -> TranscodeResult:
    """Transcode one DICOM Part 10 file; never raises."""
    state = _State()
    started = time.perf_counter()
    try:
        result = _transcode(dicom, settings, state)
    except _Skip as skip:
        log.debug("SOP Instance %s stored as received: %s", state.sop_uid or "?", skip)
        return state.unchanged(dicom, "skipped", str(skip))
    except Exception as error:  # the contract: never raise, store the original
        reason = _describe(error)
        log.warning("transcoding failed for SOP Instance %s, stored as received: %s", state.sop_uid or "?", reason)
        return state.unchanged(dicom, "failed", reason)
    log.debug(
        "SOP Instance %s: %s -> %s, %d -> %d bytes in %.2f ms",
        result.sop_instance_uid,
        result.syntax_before,
        result.syntax_after,
        result.bytes_before,
        result.bytes_after,
        (time.perf_counter() - started) * 1e3,
    )
    return result


def _describe(error: Exception) -> str:
    """One line naming the exception; pydicom sometimes puts a whole traceback in the message."""
    if isinstance(error, TranscodeError):
        return str(error)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}: {first_line[:300]}".rstrip(": ")


@dataclass
class _State:
    """What is known so far, so that a failure at any point still reports it."""

    sop_uid: str = ""
    syntax: str = ""
    size: int = 0

    def unchanged(self, dicom: bytes, outcome: str, reason: str) -> TranscodeResult:
        return TranscodeResult(
            dicom, False, outcome, reason, self.syntax, self.syntax, self.size, self.size, self.sop_uid
        )


def _transcode(dicom: bytes, settings: TranscodeSettings, state: _State) -> TranscodeResult:
    state.size = len(dicom)
    data = dicom if isinstance(dicom, bytes) else bytes(dicom)
    if settings.target == "none":
        try:
            meta = _read_meta(data)
            state.syntax, state.sop_uid = meta.syntax, meta.sop_uid
        except Exception:  # only informative here
            pass
        raise _Skip("target is none")
    backends = _backends(settings)

    meta = _read_meta(data)
    state.syntax, state.sop_uid = meta.syntax, meta.sop_uid
    if meta.syntax not in settings.transcodable_syntaxes:
        if _is_compressed(meta.syntax):
            raise _Skip(f"already compressed ({meta.syntax})")
        raise _Skip(f"transfer syntax {meta.syntax} is not configured for transcoding")

    if meta.syntax in (ExplicitVRLittleEndian, DeflatedExplicitVRLittleEndian):
        try:
            body = data if meta.syntax == ExplicitVRLittleEndian else _inflate(data, meta.end)
            image, layout = _scan_explicit_le(body, meta.end)
        except _SlowPath:
            image, layout, dataset = _read_with_pydicom(data)
        else:
            dataset = None
    else:
        image, layout, dataset = _read_with_pydicom(data)
    if image.sop_uid:
        state.sop_uid = image.sop_uid

    _check(image, settings)
    frames = _frames(image)
    rct = image.photometric == "RGB"
    backend, codestreams, fallback_note = _encode_with_fallback(backends, frames, image.bits_stored, rct, settings, state)

    pixel_items = encapsulate(codestreams, has_bot=True)
    photometric = "YBR_RCT" if rct else None
    if dataset is None:
        out = _splice(body, meta, layout, backend.TRANSFER_SYNTAX, pixel_items, photometric)
    else:
        out = _write_with_pydicom(dataset, image, backend.TRANSFER_SYNTAX, pixel_items, photometric)
    syntax_after = str(backend.TRANSFER_SYNTAX)
    return TranscodeResult(
        out, True, "transcoded", fallback_note, meta.syntax, syntax_after, state.size, len(out), state.sop_uid
    )


def _is_compressed(syntax: str) -> bool:
    try:
        return UID(syntax).is_compressed
    except ValueError:  # private or unknown UID: pydicom cannot tell
        return False


def _backends(settings: TranscodeSettings) -> list[ModuleType]:
    if settings.target == "htj2k":
        return [htj2k, j2k] if settings.fallback_to_j2k else [htj2k]
    if settings.target == "j2k":
        return [j2k]
    raise TranscodeError(f"unknown transcoding target {settings.target!r} (expected 'htj2k', 'j2k' or 'none')")


# ---------------------------------------------------------------------------
# What the encoder needs, whichever reader produced it


@dataclass
class _Image:
    sop_uid: str = ""
    rows: int | None = None
    columns: int | None = None
    samples: int | None = None
    bits_allocated: int | None = None
    bits_stored: int | None = None
    high_bit: int | None = None
    pixel_representation: int = 0
    photometric: str = ""
    planar: int = 0
    frames: int = 1
    overlay_bits: dict[int, int] = field(default_factory=dict)  # group -> OverlayBitPosition
    overlay_data: set[int] = field(default_factory=set)  # groups with (60xx,3000) OverlayData
    has_float_pixels: bool = False
    pixels: bytes | memoryview | None = None  # the raw Pixel Data value
    big_endian: bool = False
    pixel_vr: str = "OB"


_SUPPORTED_PHOTOMETRIC = {
    ("MONOCHROME1", 1),
    ("MONOCHROME2", 1),
    ("PALETTE COLOR", 1),
    ("RGB", 3),
    ("YBR_FULL", 3),
}


def _check(image: _Image, settings: TranscodeSettings) -> None:
    """Raise _Skip (store as is) or TranscodeError (inconsistent header) before any pixel work."""
    if image.pixels is None:
        raise _Skip("float pixel data" if image.has_float_pixels else "no pixel data")
    missing = [
        name
        for name, value in (
            ("Rows", image.rows),
            ("Columns", image.columns),
            ("SamplesPerPixel", image.samples),
            ("BitsAllocated", image.bits_allocated),
        )
        if not value
    ]
    if missing:
        raise TranscodeError(f"pixel data without {', '.join(missing)}")
    if image.bits_allocated not in (8, 16):
        raise _Skip(f"BitsAllocated {image.bits_allocated} is not supported (only 8 and 16)")
    if image.bits_stored is None:
        image.bits_stored = image.bits_allocated
    if not 1 <= image.bits_stored <= image.bits_allocated:
        raise TranscodeError(f"BitsStored {image.bits_stored} does not fit BitsAllocated {image.bits_allocated}")
    if image.high_bit is not None and image.high_bit != image.bits_stored - 1:
        # values not in the low bits: masking to BitsStored would destroy them
        raise _Skip(f"HighBit {image.high_bit} is not BitsStored - 1 ({image.bits_stored - 1})")
    if (image.photometric, image.samples) not in _SUPPORTED_PHOTOMETRIC:
        raise _Skip(
            f"photometric interpretation {image.photometric or '(none)'} with "
            f"{image.samples} samples per pixel is not supported"
        )
    if len(image.pixels) < settings.min_pixel_bytes:
        raise _Skip(f"pixel data ({len(image.pixels)} bytes) below min_pixel_bytes ({settings.min_pixel_bytes})")
    for group, position in image.overlay_bits.items():
        if position >= image.bits_stored and group not in image.overlay_data:
            raise _Skip("overlay planes embedded in unused pixel bits")
    frame_bytes = image.rows * image.columns * image.samples * image.bits_allocated // 8
    expected, actual = image.frames * frame_bytes, len(image.pixels)
    # A few bytes of padding after the last frame are dropped; a whole frame more suggests a wrong header
    if not expected <= actual < expected + max(frame_bytes, 2):
        raise TranscodeError(f"pixel data is {actual} bytes, header describes {expected}")


def _frames(image: _Image) -> np.ndarray:
    """Frames as (F, H, W) or (F, H, W, 3) little-endian arrays, unused high bits cleared.

    Samples are always interleaved (encoders take H x W x 3), so planar input is
    transposed; the output declares PlanarConfiguration 0. Signed data is
    sign-extended from BitsStored, unsigned data masked: junk in the unused bits
    would otherwise be encoded (and ruin compression).
    """
    count = image.frames * image.rows * image.columns * image.samples
    width = image.bits_allocated // 8
    kind = "i" if image.pixel_representation == 1 else "u"
    if image.big_endian and width == 1 and image.pixel_vr == "OW":
        # 8-bit samples in big-endian OW are stored as swapped 16-bit words
        words = np.frombuffer(image.pixels, ">u2", len(image.pixels) // 2)
        raw = words.astype("<u2").view(f"{kind}1")[:count]
    else:
        raw = np.frombuffer(image.pixels, f"{'>' if image.big_endian else '<'}{kind}{width}", count)
        if image.big_endian and width > 1:
            raw = raw.astype(raw.dtype.newbyteorder("<"))
    if image.samples == 1:
        arr = raw.reshape(image.frames, image.rows, image.columns)
    elif image.planar == 1:
        arr = np.ascontiguousarray(
            raw.reshape(image.frames, image.samples, image.rows, image.columns).transpose(0, 2, 3, 1)
        )
    else:
        arr = raw.reshape(image.frames, image.rows, image.columns, image.samples)

    unused = image.bits_allocated - image.bits_stored
    if unused:
        if kind == "u":
            arr = arr & arr.dtype.type((1 << image.bits_stored) - 1)
        else:
            unsigned = arr.view(f"u{width}") << np.uint8(unused)
            arr = unsigned.view(f"i{width}") >> np.int8(unused)
    return arr


# ---------------------------------------------------------------------------
# Encoding


def _encode_with_fallback(
    backends: list[ModuleType],
    frames: np.ndarray,
    bits_stored: int,
    rct: bool,
    settings: TranscodeSettings,
    state: _State,
) -> tuple[ModuleType, list[bytes], str]:
    """Encode every frame with the first backend that succeeds (and verifies)."""
    problems = []
    for backend in backends:
        try:
            codestreams = _encode_frames(backend, frames, bits_stored, rct, settings)
        except Exception as error:
            problems.append(f"{backend.NAME}: {_describe(error)}")
            continue
        note = "; ".join(problems)
        if note:
            log.warning("SOP Instance %s: fell back to %s after %s", state.sop_uid or "?", backend.NAME, note)
        return backend, codestreams, note
    raise TranscodeError("; ".join(problems))


def _encode_frames(
    backend: ModuleType, frames: np.ndarray, bits_stored: int, rct: bool, settings: TranscodeSettings
) -> list[bytes]:
    jobs = [(backend, frame, bits_stored, rct, settings.verify, index) for index, frame in enumerate(frames)]
    if len(jobs) == 1 or settings.frame_threads <= 1:
        return [_encode_frame(*job) for job in jobs]
    pool = _executor(settings.frame_threads)
    futures = [pool.submit(_encode_frame, *job) for job in jobs]
    try:
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()


def _encode_frame(
    backend: ModuleType, frame: np.ndarray, bits_stored: int, rct: bool, verify: bool, index: int
) -> bytes:
    """Encode one frame; with verify, decode it again and demand the very same values.

    The decoded width may be narrower (J2K declares BitsStored, so 8 stored bits in
    16 decode as uint8), the signedness may not.
    """
    codestream = backend.encode(frame, bits_stored, rct)
    if verify:
        decoded = backend.decode(codestream)
        same_kind = decoded.dtype.kind == frame.dtype.kind and decoded.shape == frame.shape
        if not (same_kind and np.array_equal(decoded, frame)):
            raise TranscodeError(f"verification mismatch in frame {index + 1}")
    return codestream


_executors: dict[int, Executor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> Executor:
    """One long-lived pool per size: starting threads per instance would cost more than small frames."""
    with _executors_lock:
        pool = _executors.get(workers)
        if pool is None:
            pool = _executors[workers] = ThreadPoolExecutor(workers, thread_name_prefix="neuronova-encode")
        return pool


# ---------------------------------------------------------------------------
# Fast path: Explicit VR Little Endian bytes, no Dataset

_ELEMENT = struct.Struct("<HH2sH")
_UINT32 = struct.Struct("<I")
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO"}
    | {b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA, _FLOAT_PIXELS, _DOUBLE_PIXELS = 0x7FE00010, 0x7FE00008, 0x7FE00009
_PHOTOMETRIC, _PLANAR_CONFIGURATION, _TRAILING_PADDING = 0x00280004, 0x00280006, 0xFFFCFFFC
# Retired group lengths that the new Photometric Interpretation / Pixel Data would falsify
_STALE_GROUP_LENGTHS = frozenset({0x00280000, 0x7FE00000})
_US_FIELDS = {
    0x00280002: "samples",
    0x00280006: "planar",
    0x00280010: "rows",
    0x00280011: "columns",
    0x00280100: "bits_allocated",
    0x00280101: "bits_stored",
    0x00280102: "high_bit",
    0x00280103: "pixel_representation",
}
_TEXT_FIELDS = {0x00080018: "sop_uid", 0x00280004: "photometric"}
_NUMBER_OF_FRAMES = 0x00280008


@dataclass
class _Meta:
    end: int  # offset of the first dataset byte
    syntax: str
    sop_uid: str
    elements: list[tuple[int, int, int]]  # (tag, start, end) of each meta element


@dataclass
class _Layout:
    """Byte spans of the top-level elements the output has to change."""

    pixel_start: int  # first byte of the Pixel Data element
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # tag -> (start, end) of whole elements
    trailing: list[tuple[int, int]] = field(default_factory=list)  # elements after Pixel Data that are kept


def _element(data: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value offset, value length) of the Explicit VR Little Endian element at pos."""
    group, element, vr, length = _ELEMENT.unpack_from(data, pos)
    if vr in _LONG_VRS:
        return group << 16 | element, vr, pos + 12, _UINT32.unpack_from(data, pos + 8)[0]
    if vr not in _SHORT_VRS:
        raise _SlowPath(f"no known explicit VR at offset {pos}")
    return group << 16 | element, vr, pos + 8, length


def _text(value: bytes) -> str:
    return value.decode("ascii", "replace").strip("\x00 ")


def _read_meta(data: bytes) -> _Meta:
    """Parse the File Meta Information (always Explicit VR Little Endian)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise TranscodeError("not a DICOM Part 10 file (no 'DICM' prefix at byte 128)")
    pos, elements, values, stated_end = 132, [], {}, None
    try:
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            if pos == stated_end and _text(values.get(0x00020010, b"")) == DeflatedExplicitVRLittleEndian:
                break  # a deflate stream may well start with bytes that look like group 0002
            tag, _, start, length = _element(data, pos)
            end = start + length
            if length == _UNDEFINED or end > len(data):
                raise TranscodeError(f"malformed file meta element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            elements.append((tag, pos, end))
            values[tag] = data[start:end]
            if tag == 0x00020000 and length == 4:
                stated_end = end + _UINT32.unpack_from(data, start)[0]
            pos = end
    except (_SlowPath, struct.error):
        raise TranscodeError("malformed file meta information") from None
    syntax = _text(values.get(0x00020010, b""))
    if not syntax:
        raise TranscodeError("file meta information has no (0002,0010) TransferSyntaxUID")
    return _Meta(pos, syntax, _text(values.get(0x00020003, b"")), elements)


def _inflate(data: bytes, meta_end: int) -> bytes:
    """Deflated Explicit VR Little Endian: the dataset is a raw deflate stream after the meta."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    return data[:meta_end] + inflater.decompress(data[meta_end:]) + inflater.flush()


def _skip_sequence(data: bytes, pos: int) -> int:
    """Offset just past an undefined-length sequence whose first item starts at pos."""
    while True:
        tag, length = _tag_and_length(data, pos)
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise _SlowPath(f"unexpected tag in sequence at offset {pos}")
        pos = _skip_item(data, pos + 8) if length == _UNDEFINED else pos + 8 + length


def _skip_item(data: bytes, pos: int) -> int:
    """Offset just past an undefined-length item whose first element starts at pos."""
    while True:
        tag, _ = _tag_and_length(data, pos)
        if tag == _ITEM_END:
            return pos + 8
        tag, vr, start, length = _element(data, pos)
        pos = _skip_undefined(data, vr, start) if length == _UNDEFINED else start + length


def _skip_undefined(data: bytes, vr: bytes, start: int) -> int:
    if vr != b"SQ":  # e.g. UN of undefined length holds Implicit VR content
        raise _SlowPath(f"undefined length {vr.decode('ascii', 'replace')} element")
    return _skip_sequence(data, start)


def _tag_and_length(data: bytes, pos: int) -> tuple[int, int]:
    group, element, length = struct.unpack_from("<HHI", data, pos)
    return group << 16 | element, length


def _scan_explicit_le(data: bytes, pos: int) -> tuple[_Image, _Layout]:
    """Walk the top-level elements once, collecting what the encoder and the splice need."""
    try:
        return _scan(data, pos)
    except struct.error:
        raise _SlowPath("element runs past the end of the file") from None


def _scan(data: bytes, pos: int) -> tuple[_Image, _Layout]:
    image, spans, size = _Image(), {}, len(data)
    while pos < size:
        tag, vr, start, length = _element(data, pos)
        if tag == _PIXEL_DATA:
            break
        if length == _UNDEFINED:
            pos = _skip_undefined(data, vr, start)
            continue
        end = start + length
        if end > size:
            raise _SlowPath("element runs past the end of the file")
        if tag in (_PHOTOMETRIC, _PLANAR_CONFIGURATION) or tag in _STALE_GROUP_LENGTHS:
            spans[tag] = (pos, end)
        if tag in _US_FIELDS and length >= 2:
            setattr(image, _US_FIELDS[tag], data[start] | data[start + 1] << 8)
        elif tag in _TEXT_FIELDS:
            setattr(image, _TEXT_FIELDS[tag], _text(data[start:end]))
        elif tag == _NUMBER_OF_FRAMES:
            image.frames = _frame_count(_text(data[start:end]))
        elif 0x60000000 <= tag < 0x60200000 and not (tag >> 16) & 1:
            group = tag >> 16
            if tag & 0xFFFF == 0x0102 and length >= 2:
                image.overlay_bits[group] = data[start] | data[start + 1] << 8
            elif tag & 0xFFFF == 0x3000:
                image.overlay_data.add(group)
        elif tag in (_FLOAT_PIXELS, _DOUBLE_PIXELS):
            image.has_float_pixels = True
        pos = end
    else:
        return image, _Layout(size, spans)

    if length == _UNDEFINED:
        raise TranscodeError("encapsulated pixel data in an uncompressed transfer syntax")
    end = start + length
    if end > size:
        raise TranscodeError(f"pixel data is truncated ({size - start} of {length} bytes)")
    image.pixels = memoryview(data)[start:end]
    image.pixel_vr = vr.decode("ascii")
    layout = _Layout(pos, spans)
    pos = end
    while pos < size:  # rare: elements after Pixel Data; DataSetTrailingPadding is dropped
        tag, vr, value_start, length = _element(data, pos)
        if length == _UNDEFINED:
            raise _SlowPath("undefined length element after pixel data")
        element_end = value_start + length
        if element_end > size:
            raise _SlowPath("element runs past the end of the file")
        if tag != _TRAILING_PADDING:
            layout.trailing.append((pos, element_end))
        pos = element_end
    return image, layout


def _frame_count(text: str) -> int:
    """NumberOfFrames is IS text that may be empty (one frame)."""
    try:
        frames = int(text) if text else 1
    except ValueError:
        raise TranscodeError(f"NumberOfFrames {text!r} is not an integer") from None
    if frames < 1:
        raise TranscodeError(f"NumberOfFrames {frames} is not positive")
    return frames


def _splice(
    data: bytes, meta: _Meta, layout: _Layout, syntax: UID, pixel_items: bytes, photometric: str | None
) -> bytes:
    """Preamble + new meta + the original dataset up to Pixel Data + encapsulated Pixel Data.

    Only whole top-level elements are replaced, so no other length changes.
    """
    parts: list[bytes | memoryview] = [data[:132], _file_meta(data, meta, syntax)]
    view = memoryview(data)
    edits = []
    for tag, (start, end) in layout.spans.items():
        if tag in _STALE_GROUP_LENGTHS:
            edits.append((start, end, b""))
        elif tag == _PLANAR_CONFIGURATION:
            edits.append((start, end, b"\x28\x00\x06\x00US\x02\x00\x00\x00"))
        elif tag == _PHOTOMETRIC and photometric:
            value = photometric.encode("ascii") + b" " * (len(photometric) & 1)
            edits.append((start, end, b"\x28\x00\x04\x00CS" + struct.pack("<H", len(value)) + value))
    pos = meta.end
    for start, end, replacement in sorted(edits):
        parts += [view[pos:start], replacement]
        pos = end
    parts.append(view[pos : layout.pixel_start])
    parts += [b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff", pixel_items, b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"]
    parts += [view[start:end] for start, end in layout.trailing]
    return b"".join(parts)


def _file_meta(data: bytes, meta: _Meta, syntax: UID) -> bytes:
    """The original meta elements with a new TransferSyntaxUID and a recomputed group length."""
    uid = str(syntax).encode("ascii")
    uid += b"\x00" * (len(uid) & 1)
    syntax_element = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(uid)) + uid
    elements = [(tag, data[start:end]) for tag, start, end in meta.elements if tag not in (0x00020000, 0x00020010)]
    elements.append((0x00020010, syntax_element))
    body = b"".join(raw for _, raw in sorted(elements, key=lambda item: item[0]))
    return b"\x02\x00\x00\x00UL\x04\x00" + _UINT32.pack(len(body)) + body


# ---------------------------------------------------------------------------
# Slow path: pydicom for Implicit VR, big endian and anything the walker declines

_SWAP_WIDTHS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _read_with_pydicom(data: bytes) -> tuple[_Image, None, pydicom.Dataset]:
    dataset = pydicom.dcmread(BytesIO(data))
    image = _Image(
        sop_uid=str(dataset.get("SOPInstanceUID", "") or ""),
        rows=dataset.get("Rows"),
        columns=dataset.get("Columns"),
        samples=dataset.get("SamplesPerPixel"),
        bits_allocated=dataset.get("BitsAllocated"),
        bits_stored=dataset.get("BitsStored"),
        high_bit=dataset.get("HighBit"),
        pixel_representation=dataset.get("PixelRepresentation") or 0,
        photometric=str(dataset.get("PhotometricInterpretation", "") or "").strip(),
        planar=dataset.get("PlanarConfiguration") or 0,
        frames=_frame_count(str(dataset.get("NumberOfFrames", "") or "").strip()),
        has_float_pixels="FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset,
        big_endian=not dataset.original_encoding[1],
    )
    for group in range(0x6000, 0x6020, 2):
        position = dataset.get((group, 0x0102))
        if position is not None and position.value is not None:
            image.overlay_bits[group] = int(position.value)
        if (group, 0x3000) in dataset:
            image.overlay_data.add(group)
    if "PixelData" in dataset:
        element = dataset["PixelData"]
        if element.is_undefined_length:
            raise TranscodeError("encapsulated pixel data in an uncompressed transfer syntax")
        image.pixels = element.value
        image.pixel_vr = element.VR
    return image, None, dataset


def _write_with_pydicom(
    dataset: pydicom.Dataset, image: _Image, syntax: UID, pixel_items: bytes, photometric: str | None
) -> bytes:
    """Re-encode the whole dataset as Explicit VR Little Endian with encapsulated Pixel Data.

    Iterating converts every raw element into a typed one (VR from the dictionary
    where the file had none, e.g. an Implicit VR dataset labelled Explicit), which
    pydicom then re-encodes. Binary VRs are not converted by pydicom, so big-endian
    OW/OF/... values (LUT data, overlays) are swapped here.
    """
    for element in dataset.iterall():
        width = _SWAP_WIDTHS.get(element.VR)
        if image.big_endian and width and element.tag != _PIXEL_DATA and element.value:
            element.value = np.frombuffer(element.value, f">u{width}").astype(f"<u{width}").tobytes()
    dataset.PixelData = pixel_items
    element = dataset["PixelData"]
    element.VR = "OB"
    element.is_undefined_length = True
    if photometric:
        dataset.PhotometricInterpretation = photometric
    if image.samples == 3 and "PlanarConfiguration" in dataset:
        dataset.PlanarConfiguration = 0
    dataset.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()
