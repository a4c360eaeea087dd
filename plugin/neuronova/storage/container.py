"""The file the storage area keeps on disk for a DICOM attachment: a standard HTJ2K Part-10 file
(one fragment per frame, Basic Offset Table) that also carries what is needed to give back the
received bytes exactly, so that Orthanc's core only ever reads what it received.

The restore recipe is the last element of the file, a private OB element (7FE3,1010) of creator
"NEURONOVA RESTORE": the received file's bytes are rebuilt from spans copied from the container,
literal bytes (the original file meta, the elements the HTJ2K file had to change, padding) and the
decoded frames, with the bits above Bits Stored (junk, overlays) put back from a residual. The
recipe ends with a fixed footer, so a container is told from a plain file by its last 16 bytes.

`pack` never raises: it answers what to store (a container, or None for "as received") and why.
Before a container is answered it is restored and compared byte for byte with the received file.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import struct
import threading
import zlib
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from io import BytesIO
from types import ModuleType
from typing import Iterator

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

from .codec import BY_SYNTAX, htj2k, j2k
from .layout import (
    PHOTOMETRIC,
    PLANAR_CONFIGURATION,
    STALE_GROUP_LENGTHS,
    TRAILING_PADDING,
    UINT32,
    Image,
    LayoutError,
    Meta,
    read_image,
    read_meta,
)

log = logging.getLogger("neuronova.storage")

#: What the storage area may compress: the uncompressed syntaxes whose bytes can be rebuilt exactly.
PACKABLE_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})

_GROUP = 0x7FE3
_CREATOR = b"NEURONOVA RESTORE "  # LO, even length
_FOOTER_MAGIC = b"NNRESTORE1\x00\x00"
_FOOTER = struct.Struct("<I12s")
_PIXEL_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
_SEQUENCE_DELIMITER = b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
_COPY, _LITERAL, _PIXELS = 0, 1, 2


@dataclass(frozen=True)
class PackSettings:
    target: str = "htj2k"  # "htj2k" | "j2k" | "none"
    fallback_to_j2k: bool = True  # when HTJ2K fails (or does not verify), try JPEG 2000 lossless
    syntaxes: frozenset[str] = PACKABLE_SYNTAXES
    min_pixel_bytes: int = 0  # below this Pixel Data size, store as received
    max_object_bytes: int = 2048 * 1024 * 1024  # above this file size, store as received
    frame_threads: int = 2  # threads for one multi-frame object (the encoders release the GIL)


@dataclass(frozen=True)
class Packed:
    data: bytes | None  # the container, or None: store the received bytes
    outcome: str  # "compressed" | "skipped" | "failed"
    reason: str  # why skipped / failed, or the backend that failed before a fallback; else ""
    syntax_before: str
    syntax_after: str
    sop_uid: str


_BYTES_LITERAL = re.compile(r"""b(['"]).*?(?<!\\)\1""")


class ContainerError(Exception):
    """A container that cannot be restored; the message is a complete reason."""


class _Skip(Exception):
    """Valid, but stored as received."""


# ---------------------------------------------------------------------------
# Packing


def pack(received: bytes, settings: PackSettings) -> Packed:
    """What to store for one received DICOM file; never raises."""
    meta: Meta | None = None
    image: Image | None = None
    try:
        meta = read_meta(received)
        _check_syntax(meta, settings)
        if len(received) > settings.max_object_bytes:
            raise _Skip(f"file of {len(received)} bytes above MaxObjectSizeMB")
        image = read_image(received, meta)
        _check_image(image, settings)
        return _pack(received, meta, image, settings)
    except _Skip as skip:
        return _unchanged(received, meta, image, "skipped", str(skip))
    except Exception as error:  # the contract: never raise, store the received bytes
        reason = _describe(error)
        log.warning("SOP Instance %s stored uncompressed: %s", _sop(meta, image) or "?", reason)
        return _unchanged(received, meta, image, "failed", reason)


def _sop(meta: Meta | None, image: Image | None) -> str:
    return (image.sop_uid if image and image.sop_uid else "") or (meta.sop_uid if meta else "")


def _unchanged(received: bytes, meta: Meta | None, image: Image | None, outcome: str, reason: str) -> Packed:
    """Store as received; a file that would read as a container (one copied out of a storage area,
    or ending with the footer by chance) is wrapped in one that gives it back verbatim."""
    syntax = meta.syntax if meta else ""
    data = _wrapped(received) if isinstance(received, bytes) and is_container(received) else None
    return Packed(data, outcome, reason, syntax, syntax, _sop(meta, image))


def _wrapped(received: bytes) -> bytes:
    literals = _Literals()
    recipe = {"version": 1, "size": len(received), "crc32": zlib.crc32(received), "syntax": "",
              "ops": [[_COPY, 0, len(received)]], "layout": None, "fragments": [], "residuals": []}
    return received + _private_block(recipe, literals)


def _describe(error: Exception) -> str:
    """One line naming the exception; pydicom sometimes puts a whole traceback in the message."""
    if isinstance(error, (LayoutError, ContainerError)):
        return str(error)
    first_line = (str(error).strip().splitlines() or [""])[0]
    first_line = _BYTES_LITERAL.sub("b'...'", first_line)  # file bytes may be patient data: never logged
    return f"{type(error).__name__}: {first_line[:300]}".rstrip(": ")


def _check_syntax(meta: Meta, settings: PackSettings) -> None:
    if settings.target == "none":
        raise _Skip("Transcoding.Target is none")
    if meta.syntax in settings.syntaxes:
        return
    if meta.syntax == DeflatedExplicitVRLittleEndian:
        raise _Skip("deflated: its exact bytes cannot be rebuilt from the pixels")
    try:
        compressed = UID(meta.syntax).is_compressed
    except ValueError:
        compressed = False
    raise _Skip(f"already compressed ({meta.syntax})" if compressed else f"transfer syntax {meta.syntax} not packed")


_SUPPORTED_PHOTOMETRIC = {("MONOCHROME1", 1), ("MONOCHROME2", 1), ("PALETTE COLOR", 1), ("RGB", 3), ("YBR_FULL", 3)}


def _check_image(image: Image, settings: PackSettings) -> None:
    """Raise _Skip (store as received) or LayoutError (inconsistent header) before any pixel work."""
    if image.pixels is None:
        raise _Skip("float pixel data" if image.has_float_pixels else "no pixel data")
    missing = [name for name, value in (("Rows", image.rows), ("Columns", image.columns),
                                        ("SamplesPerPixel", image.samples), ("BitsAllocated", image.bits_allocated))
               if not value]
    if missing:
        raise LayoutError(f"pixel data without {', '.join(missing)}")
    if image.bits_allocated not in (8, 16):
        raise _Skip(f"BitsAllocated {image.bits_allocated} is not supported (only 8 and 16)")
    if image.bits_stored is None:
        image.bits_stored = image.bits_allocated
    if not 1 <= image.bits_stored <= image.bits_allocated:
        raise LayoutError(f"BitsStored {image.bits_stored} does not fit BitsAllocated {image.bits_allocated}")
    if image.high_bit is not None and image.high_bit != image.bits_stored - 1:
        raise _Skip(f"HighBit {image.high_bit} is not BitsStored - 1 ({image.bits_stored - 1})")
    if image.pixel_representation not in (0, 1):  # PS3.3 C.7.6.3.1.1: unsigned 0, two's complement 1
        raise _Skip(f"PixelRepresentation {image.pixel_representation} is neither 0 nor 1")
    if image.samples > 1 and image.planar not in (0, 1):  # PS3.3 C.7.6.3.1.3
        raise _Skip(f"PlanarConfiguration {image.planar} is neither 0 nor 1")
    if (image.photometric, image.samples) not in _SUPPORTED_PHOTOMETRIC:
        raise _Skip(f"photometric interpretation {image.photometric or '(none)'} with "
                    f"{image.samples} samples per pixel is not supported")
    if len(image.pixels) < settings.min_pixel_bytes:
        raise _Skip(f"pixel data ({len(image.pixels)} bytes) below MinPixelBytes ({settings.min_pixel_bytes})")
    expected, actual = image.frames * image.frame_bytes, len(image.pixels)
    if not expected <= actual < expected + max(image.frame_bytes, 2):
        raise LayoutError(f"pixel data is {actual} bytes, header describes {expected}")
    if image.big_endian and image.bits_allocated == 8 and image.pixel_vr == "OW" and image.frame_bytes % 2:
        raise _Skip("8-bit big-endian OW pixel data with an odd frame size")
    if any(tag != TRAILING_PADDING and tag >= _GROUP << 16 for tag, _, _ in image.trailing) or (
            image.dataset is not None and image.trailing):
        raise _Skip("elements after Pixel Data that the container cannot follow")


def _backends(settings: PackSettings) -> list[ModuleType]:
    if settings.target == "htj2k":
        return [htj2k, j2k] if settings.fallback_to_j2k else [htj2k]
    return [j2k]


def _pack(received: bytes, meta: Meta, image: Image, settings: PackSettings) -> Packed:
    problems = []
    for backend in _backends(settings):
        try:
            container = _build(received, meta, image, backend, settings)
            _verify(container, received)
        except Exception as error:
            problems.append(f"{backend.NAME}: {_describe(error)}")
            continue
        note = "; ".join(problems)
        if note:
            log.warning("SOP Instance %s: fell back to %s after %s", image.sop_uid or meta.sop_uid or "?",
                        backend.NAME, note)
        return Packed(container, "compressed", note, meta.syntax, str(backend.TRANSFER_SYNTAX),
                      image.sop_uid or meta.sop_uid)
    raise ContainerError("; ".join(problems))


def _verify(container: bytes, received: bytes) -> None:
    """Restore the container exactly as a read would, and demand the received bytes."""
    position = 0
    for chunk in restore_chunks(container):
        end = position + len(chunk)
        if len(chunk) > 65536:  # a frame: numpy compares without holding the GIL, and without a copy
            same = np.array_equal(np.frombuffer(received, np.uint8, len(chunk), position),
                                  np.frombuffer(chunk, np.uint8))
        else:  # bytes to bytes is a memcmp (a memoryview compares element by element)
            same = received[position:end] == bytes(chunk)
        if not same:
            raise ContainerError(f"verification mismatch at byte {position}")
        position = end
    if position != len(received):
        raise ContainerError(f"verification mismatch: {position} of {len(received)} bytes rebuilt")


# ---------------------------------------------------------------------------
# Frames: the encoder's arrays and the received bytes of each frame


@dataclass(frozen=True)
class _PixelLayout:
    """How a frame's received bytes are laid out; stored in the recipe to rebuild them."""

    rows: int
    columns: int
    samples: int
    width: int  # bytes per sample
    signed: bool
    big_endian: bool
    planar: bool
    swapped_words: bool  # 8-bit samples in big-endian OW: bytes swapped in pairs

    @classmethod
    def of(cls, image: Image) -> "_PixelLayout":
        width = image.bits_allocated // 8
        return cls(image.rows, image.columns, image.samples, width, image.pixel_representation == 1,
                   image.big_endian and width > 1, image.samples == 3 and image.planar == 1,
                   image.big_endian and width == 1 and image.pixel_vr == "OW")

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(f"{'>' if self.big_endian else '<'}{'i' if self.signed else 'u'}{self.width}")

    def to_array(self, raw: memoryview) -> np.ndarray:
        """The frame as the encoders take it: little-endian, H x W or H x W x 3 interleaved."""
        if self.swapped_words:
            array = np.frombuffer(raw, ">u2").astype("<u2").view(self.dtype)
        else:
            array = np.frombuffer(raw, self.dtype)
            if self.big_endian:
                array = array.astype(self.dtype.newbyteorder("<"))
        if self.samples == 1:
            return array.reshape(self.rows, self.columns)
        if self.planar:
            return np.ascontiguousarray(array.reshape(self.samples, self.rows, self.columns).transpose(1, 2, 0))
        return array.reshape(self.rows, self.columns, self.samples)

    def to_bytes(self, array: np.ndarray) -> memoryview:
        """The inverse of to_array (a decoder may hand back a narrower type: J2K declares Bits Stored);
        a view of the array's buffer: no copy made while holding the GIL."""
        array = array.astype(self.dtype.newbyteorder("<"), copy=False)
        if self.samples == 3 and self.planar:
            array = array.transpose(2, 0, 1)
        if self.swapped_words:
            array = np.ascontiguousarray(array).view("<u2").astype(">u2")
        return memoryview(np.ascontiguousarray(array, dtype=array.dtype if self.swapped_words else self.dtype)).cast("B")

    def to_json(self) -> dict:
        return self.__dict__.copy()


def _normalized(array: np.ndarray, bits_stored: int, bits_allocated: int) -> np.ndarray:
    """Unused high bits cleared (unsigned) or sign-extended (signed): the encoders code them otherwise.
    The array itself when its values already fit Bits Stored (the common case: two reductions, no copy)."""
    unused = bits_allocated - bits_stored
    if not unused:
        return array
    signed = array.dtype.kind == "i"
    low, high = (-(1 << (bits_stored - 1)), (1 << (bits_stored - 1)) - 1) if signed else (0, (1 << bits_stored) - 1)
    if array.max() <= high and (not signed or array.min() >= low):
        return array
    if array.dtype.kind == "u":
        return array & array.dtype.type((1 << bits_stored) - 1)
    width = array.dtype.itemsize
    return (array.view(f"u{width}") << np.uint8(unused)).view(f"i{width}") >> np.int8(unused)


def _encode_frame(backend: ModuleType, image: Image, layout: _PixelLayout, index: int) -> tuple[bytes, bytes | None]:
    """(codestream, residual or None): what the recipe needs to give this frame's bytes back."""
    raw = image.pixels[index * image.frame_bytes:(index + 1) * image.frame_bytes]
    received = layout.to_array(raw)
    frame = _normalized(received, image.bits_stored, image.bits_allocated)
    codestream = backend.encode(frame, image.bits_stored, image.photometric == "RGB")
    residual = None  # the bits above Bits Stored, when there are any: rare, but lossless means all bits
    if frame is not received:  # values above Bits Stored: they come back from the residual
        residual = np.bitwise_xor(np.frombuffer(raw, np.uint8), np.frombuffer(layout.to_bytes(frame), np.uint8)).tobytes()
    return codestream, residual


_executors: dict[int, Executor] = {}
_executors_lock = threading.Lock()


def _executor(workers: int) -> Executor:
    """One long-lived pool per size: starting threads per object would cost more than small frames."""
    with _executors_lock:
        pool = _executors.get(workers)
        if pool is None:
            pool = _executors[workers] = ThreadPoolExecutor(workers, thread_name_prefix="neuronova-encode")
        return pool


def _encode_frames(backend: ModuleType, image: Image, layout: _PixelLayout, threads: int):
    if image.frames == 1 or threads <= 1:
        return [_encode_frame(backend, image, layout, index) for index in range(image.frames)]
    futures = [_executor(threads).submit(_encode_frame, backend, image, layout, index)
               for index in range(image.frames)]
    try:
        return [future.result() for future in futures]
    finally:
        for future in futures:
            future.cancel()


# ---------------------------------------------------------------------------
# Building the container


class _Literals:
    """The recipe's literal bytes, one deflated blob."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data) -> list[int]:
        data = bytes(data)
        self.parts.append(data)
        self.size += len(data)
        return [self.size - len(data), len(data)]


def _build(received: bytes, meta: Meta, image: Image, backend: ModuleType, settings: PackSettings) -> bytes:
    layout = _PixelLayout.of(image)
    encoded = _encode_frames(backend, image, layout, settings.frame_threads)
    pixel_items = encapsulate([codestream for codestream, _ in encoded], has_bot=True)
    photometric = "YBR_RCT" if image.photometric == "RGB" else None
    if image.dataset is None:
        parts = _spliced_parts(received, meta, image, backend.TRANSFER_SYNTAX, photometric)
    else:
        parts = [("new", _header_with_pydicom(image.dataset, image, backend.TRANSFER_SYNTAX, photometric))]
    parts += [("new", _PIXEL_HEADER), ("items", pixel_items), ("new", _SEQUENCE_DELIMITER)]
    parts += [("R", start, end) for tag, start, end in image.trailing if tag != TRAILING_PADDING]

    view, chunks, views, offset, items_offset = memoryview(received), [], [], 0, 0
    for part in parts:
        if part[0] == "R":
            chunk = view[part[1]:part[2]]
            views.append((part[1], part[2], offset))
        else:
            chunk = part[1]
            if part[0] == "items":
                items_offset = offset
        chunks.append(chunk)
        offset += len(chunk)

    literals = _Literals()
    ops = _ops(received, image, views, literals)
    fragments = _fragment_spans(pixel_items, items_offset)
    residuals = [literals.add(residual) if residual is not None else None for _, residual in encoded]
    recipe = {"version": 1, "size": len(received), "crc32": zlib.crc32(received),
              "syntax": str(backend.TRANSFER_SYNTAX), "ops": ops,
              "layout": layout.to_json(), "fragments": fragments, "residuals": residuals}
    chunks.append(_private_block(recipe, literals))
    return b"".join(chunks)


def _ops(received: bytes, image: Image, views: list[tuple[int, int, int]], literals: _Literals) -> list[list[int]]:
    """How to rebuild the received bytes: copies of container spans, literals, and the frames."""
    pixel_start = image.pixel_value_start
    pixel_end = pixel_start + image.frames * image.frame_bytes
    ops, position = [], 0

    def literal(start: int, end: int) -> None:
        if start < pixel_end and end > pixel_start:  # the gap holds the pixels: code them, keep the rest
            literal(start, pixel_start)
            ops.append([_PIXELS])
            literal(pixel_end, end)
        elif end > start:
            ops.append([_LITERAL, *literals.add(received[start:end])])

    for start, end, container_offset in views:
        literal(position, start)
        ops.append([_COPY, container_offset, end - start])
        position = end
    literal(position, len(received))
    return ops


def _fragment_spans(pixel_items: bytes, items_offset: int) -> list[list[int]]:
    """(offset in the container, length) of each frame's fragment, after the Basic Offset Table item."""
    spans, position = [], 8 + UINT32.unpack_from(pixel_items, 4)[0]
    while position < len(pixel_items):
        length = UINT32.unpack_from(pixel_items, position + 4)[0]
        spans.append([items_offset + position + 8, length])
        position += 8 + length
    return spans


def _private_block(recipe: dict, literals: _Literals) -> bytes:
    blob = zlib.compress(b"".join(literals.parts), 6)
    recipe["blob"] = len(blob)
    header = json.dumps(recipe, separators=(",", ":")).encode("ascii")
    body = UINT32.pack(len(header)) + header + blob
    body += b"\x00" * (len(body) & 1)
    value = body + _FOOTER.pack(len(body), _FOOTER_MAGIC)
    creator = struct.pack("<HH2sH", _GROUP, 0x0010, b"LO", len(_CREATOR)) + _CREATOR
    return creator + struct.pack("<HH2sHI", _GROUP, 0x1010, b"OB", 0, len(value)) + value


def _spliced_parts(received: bytes, meta: Meta, image: Image, syntax: UID, photometric: str | None) -> list[tuple]:
    """Preamble, new file meta, the received dataset up to Pixel Data with whole elements replaced."""
    parts: list[tuple] = [("R", 0, 132), ("new", _file_meta(received, meta, syntax))]
    edits = []
    for tag, (start, end) in image.spans.items():
        if tag in STALE_GROUP_LENGTHS:
            edits.append((start, end, b""))
        elif tag == PLANAR_CONFIGURATION:
            edits.append((start, end, b"\x28\x00\x06\x00US\x02\x00\x00\x00"))
        elif tag == PHOTOMETRIC and photometric:
            value = photometric.encode("ascii") + b" " * (len(photometric) & 1)
            edits.append((start, end, b"\x28\x00\x04\x00CS" + struct.pack("<H", len(value)) + value))
    position = meta.end
    for start, end, replacement in sorted(edits):
        parts += [("R", position, start), ("new", replacement)]
        position = end
    parts.append(("R", position, image.pixel_element_start))
    return [part for part in parts if part[0] != "R" or part[2] > part[1]]


def _file_meta(data: bytes, meta: Meta, syntax: UID) -> bytes:
    """The received meta elements with a new TransferSyntaxUID and a recomputed group length."""
    uid = str(syntax).encode("ascii")
    uid += b"\x00" * (len(uid) & 1)
    syntax_element = b"\x02\x00\x10\x00UI" + struct.pack("<H", len(uid)) + uid
    elements = [(tag, data[start:end]) for tag, start, end in meta.elements if tag not in (0x00020000, 0x00020010)]
    elements.append((0x00020010, syntax_element))
    body = b"".join(raw for _, raw in sorted(elements, key=lambda item: item[0]))
    return b"\x02\x00\x00\x00UL\x04\x00" + UINT32.pack(len(body)) + body


_SWAP_WIDTHS = {"OW": 2, "OL": 4, "OF": 4, "OD": 8, "OV": 8}


def _header_with_pydicom(dataset: pydicom.Dataset, image: Image, syntax: UID, photometric: str | None) -> bytes:
    """Implicit VR or big endian: the dataset without Pixel Data, re-encoded as Explicit VR Little Endian.

    Iterating converts every raw element into a typed one (VR from the dictionary where the file had
    none); binary VRs are not converted by pydicom, so big-endian OW/OF/... values are swapped here.
    """
    header = pydicom.Dataset()  # a copy: a fallback encoder builds its header from the same reading
    for tag in dataset.keys():
        if tag < 0x7FE00010:  # after Pixel Data only trailing padding gets here (_check_image)
            header.add(copy.deepcopy(dataset[tag]))
    header.file_meta = copy.deepcopy(dataset.file_meta)
    dataset = header
    for element in dataset.iterall():
        width = _SWAP_WIDTHS.get(element.VR)
        if image.big_endian and width and element.value:
            element.value = np.frombuffer(element.value, f">u{width}").astype(f"<u{width}").tobytes()
    if photometric:
        dataset.PhotometricInterpretation = photometric
    if image.samples == 3 and "PlanarConfiguration" in dataset:
        dataset.PlanarConfiguration = 0
    for tag in STALE_GROUP_LENGTHS:
        if tag in dataset:
            del dataset[tag]
    dataset.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()


# ---------------------------------------------------------------------------
# Reading


def is_container(stored) -> bool:
    """True for a file this module wrote (checked on its last 16 bytes and its DICOM prefix)."""
    return (len(stored) > 160 and stored[128:132] == b"DICM"
            and bytes(stored[-12:]) == _FOOTER_MAGIC)


@dataclass(frozen=True)
class Recipe:
    size: int
    crc32: int  # of the received file: a damaged container never reads back wrong bytes
    syntax: str
    ops: list
    layout: _PixelLayout | None
    fragments: list
    residuals: list
    literals: bytes


def read_recipe(stored) -> Recipe:
    if not is_container(stored):
        raise ContainerError("not a NeuroNova container")
    body_length, _ = _FOOTER.unpack_from(stored, len(stored) - _FOOTER.size)
    start = len(stored) - _FOOTER.size - body_length
    try:
        header_length = UINT32.unpack_from(stored, start)[0]
        recipe = json.loads(bytes(stored[start + 4:start + 4 + header_length]))
        blob_start = start + 4 + header_length
        literals = zlib.decompress(stored[blob_start:blob_start + recipe["blob"]])
        if recipe.get("version") != 1:
            raise ContainerError(f"container version {recipe.get('version')!r} is not known")
        layout = _PixelLayout(**recipe["layout"]) if recipe["layout"] else None
        return Recipe(recipe["size"], recipe["crc32"], recipe["syntax"], recipe["ops"], layout,
                      recipe["fragments"], recipe["residuals"], literals)
    except (ValueError, KeyError, TypeError, zlib.error, struct.error) as error:
        raise ContainerError(f"damaged container recipe: {_describe(error)}") from None


def frame_codestreams(stored) -> tuple[str, list[memoryview]]:
    """(transfer syntax, one codestream per frame) of a container, untouched: what viewers stream."""
    recipe = read_recipe(stored)
    view = memoryview(stored)
    return recipe.syntax, [view[offset:offset + length] for offset, length in recipe.fragments]


def restore_chunks(stored, recipe: Recipe | None = None) -> Iterator[bytes | memoryview]:
    """The received file, chunk after chunk (a frame at a time)."""
    recipe = recipe or read_recipe(stored)
    view, literals = memoryview(stored), memoryview(recipe.literals)
    for op in recipe.ops:
        if op[0] == _COPY:
            yield view[op[1]:op[1] + op[2]]
        elif op[0] == _LITERAL:
            yield literals[op[1]:op[1] + op[2]]
        else:
            backend = BY_SYNTAX.get(recipe.syntax)
            if backend is None:
                raise ContainerError(f"container syntax {recipe.syntax} has no decoder")
            for index, ((offset, length), residual) in enumerate(zip(recipe.fragments, recipe.residuals)):
                try:
                    frame = recipe.layout.to_bytes(backend.decode(view[offset:offset + length]))
                except Exception as error:
                    raise ContainerError(f"frame {index + 1} cannot be decoded: {_describe(error)}") from None
                if residual is not None:
                    difference = np.frombuffer(literals[residual[0]:residual[0] + residual[1]], np.uint8)
                    frame = memoryview(np.bitwise_xor(np.frombuffer(frame, np.uint8), difference))
                yield frame


def restore(stored) -> bytes:
    """The received file's bytes. Raises ContainerError."""
    recipe = read_recipe(stored)
    out = BytesIO()  # grows in place (mremap) and hands its buffer over: one copy of the file in memory
    checksum = 0
    for chunk in restore_chunks(stored, recipe):
        out.write(chunk)
        checksum = zlib.crc32(chunk, checksum)
    data = out.getvalue()
    if len(data) != recipe.size or checksum != recipe.crc32:
        raise ContainerError(f"restored {len(data)} bytes that do not match the received file "
                             f"({recipe.size} bytes, CRC-32 {recipe.crc32:08x}): the container is damaged")
    return data
