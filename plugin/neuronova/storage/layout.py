"""Where things are in a received DICOM file: the file meta, the image attributes the encoder needs,
and the byte offsets of Pixel Data, so that a container can give back the very same bytes.

The common case (Explicit VR Little Endian) is read by a small walker over the top-level elements,
without building a pydicom Dataset; Implicit VR and big-endian files are read with pydicom.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from io import BytesIO

import pydicom
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian


class LayoutError(Exception):
    """The file is not what its header says; the message is a complete reason."""


class SlowPath(Exception):
    """The byte-level walker met a construct it does not handle; pydicom reads the file."""


@dataclass
class Meta:
    end: int  # offset of the first dataset byte
    syntax: str
    sop_uid: str
    elements: list[tuple[int, int, int]]  # (tag, start, end) of each meta element


@dataclass
class Image:
    """What the encoder needs and where the pixels are, whichever reader produced it."""

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
    has_float_pixels: bool = False
    pixels: memoryview | None = None  # the raw Pixel Data value
    pixel_value_start: int = 0  # offset of the Pixel Data value in the file
    big_endian: bool = False
    pixel_vr: str = "OB"
    # Explicit VR Little Endian only: byte spans the container rewrites or keeps
    pixel_element_start: int = 0
    spans: dict[int, tuple[int, int]] = field(default_factory=dict)  # tag -> (start, end) of whole elements
    trailing: list[tuple[int, int, int]] = field(default_factory=list)  # (tag, start, end) after Pixel Data
    dataset: pydicom.Dataset | None = None  # pydicom's reading, when the walker could not read the file

    @property
    def frame_bytes(self) -> int:
        return self.rows * self.columns * self.samples * self.bits_allocated // 8


_ELEMENT = struct.Struct("<HH2sH")
UINT32 = struct.Struct("<I")
UNDEFINED = 0xFFFFFFFF
_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_SHORT_VRS = frozenset(
    {b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO"}
    | {b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"}
)
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA, _FLOAT_PIXELS, _DOUBLE_PIXELS = 0x7FE00010, 0x7FE00008, 0x7FE00009
PHOTOMETRIC, PLANAR_CONFIGURATION, TRAILING_PADDING = 0x00280004, 0x00280006, 0xFFFCFFFC
# Retired group lengths that a new Photometric Interpretation / Pixel Data would falsify
STALE_GROUP_LENGTHS = frozenset({0x00280000, 0x7FE00000})
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


def element(data: bytes, pos: int) -> tuple[int, bytes, int, int]:
    """(tag, VR, value offset, value length) of the Explicit VR Little Endian element at pos."""
    group, number, vr, length = _ELEMENT.unpack_from(data, pos)
    if vr in _LONG_VRS:
        return group << 16 | number, vr, pos + 12, UINT32.unpack_from(data, pos + 8)[0]
    if vr not in _SHORT_VRS:
        raise SlowPath(f"no known explicit VR at offset {pos}")
    return group << 16 | number, vr, pos + 8, length


def text(value: bytes) -> str:
    return bytes(value).decode("ascii", "replace").strip("\x00 ")


def read_meta(data: bytes) -> Meta:
    """Parse the File Meta Information (always Explicit VR Little Endian)."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise LayoutError("not a DICOM Part 10 file (no 'DICM' prefix at byte 128)")
    pos, elements, values, stated_end = 132, [], {}, None
    try:
        while pos + 8 <= len(data) and data[pos : pos + 2] == b"\x02\x00":
            if pos == stated_end and text(values.get(0x00020010, b"")) == DeflatedExplicitVRLittleEndian:
                break  # a deflate stream may well start with bytes that look like group 0002
            tag, _, start, length = element(data, pos)
            end = start + length
            if length == UNDEFINED or end > len(data):
                raise LayoutError(f"malformed file meta element ({tag >> 16:04X},{tag & 0xFFFF:04X})")
            elements.append((tag, pos, end))
            values[tag] = data[start:end]
            if tag == 0x00020000 and length == 4:
                stated_end = end + UINT32.unpack_from(data, start)[0]
            pos = end
    except (SlowPath, struct.error):
        raise LayoutError("malformed file meta information") from None
    syntax = text(values.get(0x00020010, b""))
    if not syntax:
        raise LayoutError("file meta information has no (0002,0010) TransferSyntaxUID")
    return Meta(pos, syntax, text(values.get(0x00020003, b"")), elements)


def read_image(data: bytes, meta: Meta) -> Image:
    """The image attributes and pixel offsets: the walker for Explicit VR Little Endian, else pydicom."""
    if meta.syntax == ExplicitVRLittleEndian:
        try:
            return _scan(data, meta.end)
        except SlowPath:
            pass
        except struct.error:
            pass  # an element runs past the end: pydicom says precisely what is wrong
    return _read_with_pydicom(data)


def meta_or_none(data: bytes) -> Meta | None:
    """The file meta, or None when the file has none this walker reads (Orthanc parsed it anyway)."""
    try:
        return read_meta(data)
    except LayoutError:
        return None


def top_level_values(data: bytes, tags: frozenset[int], last: int, meta: Meta | None) -> dict[int, bytes] | None:
    """The raw values of these top-level elements of an Explicit VR Little Endian file (`meta`: its
    file meta, read once by the caller), walking no further than tag `last`; None when the walker
    cannot read the file (then pydicom does)."""
    if meta is None or meta.syntax != ExplicitVRLittleEndian:
        return None
    found, pos = {}, meta.end
    try:
        while pos < len(data):
            tag, vr, start, length = element(data, pos)
            if tag > last:
                break
            if length == UNDEFINED:
                pos = _skip_undefined(data, vr, start)
                continue
            if start + length > len(data):
                return None
            if tag in tags:
                found[tag] = data[start:start + length]
            pos = start + length
    except (SlowPath, struct.error):
        return None
    return found


def _skip_sequence(data: bytes, pos: int) -> int:
    """Offset just past an undefined-length sequence whose first item starts at pos."""
    while True:
        tag, length = _tag_and_length(data, pos)
        if tag == _SEQUENCE_END:
            return pos + 8
        if tag != _ITEM:
            raise SlowPath(f"unexpected tag in sequence at offset {pos}")
        pos = _skip_item(data, pos + 8) if length == UNDEFINED else pos + 8 + length


def _skip_item(data: bytes, pos: int) -> int:
    """Offset just past an undefined-length item whose first element starts at pos."""
    while True:
        tag, _ = _tag_and_length(data, pos)
        if tag == _ITEM_END:
            return pos + 8
        tag, vr, start, length = element(data, pos)
        pos = _skip_undefined(data, vr, start) if length == UNDEFINED else start + length


def _skip_undefined(data: bytes, vr: bytes, start: int) -> int:
    if vr != b"SQ":  # e.g. UN of undefined length holds Implicit VR content
        raise SlowPath(f"undefined length {vr.decode('ascii', 'replace')} element")
    return _skip_sequence(data, start)


def _tag_and_length(data: bytes, pos: int) -> tuple[int, int]:
    group, number, length = struct.unpack_from("<HHI", data, pos)
    return group << 16 | number, length


def _scan(data: bytes, pos: int) -> Image:
    """Walk the top-level elements once, collecting what the encoder and the container need."""
    image, size = Image(), len(data)
    while pos < size:
        tag, vr, start, length = element(data, pos)
        if tag == PIXEL_DATA:
            break
        if length == UNDEFINED:
            pos = _skip_undefined(data, vr, start)
            continue
        end = start + length
        if end > size:
            raise SlowPath("element runs past the end of the file")
        if tag in (PHOTOMETRIC, PLANAR_CONFIGURATION) or tag in STALE_GROUP_LENGTHS:
            image.spans[tag] = (pos, end)
        if tag in _US_FIELDS and length >= 2:
            setattr(image, _US_FIELDS[tag], data[start] | data[start + 1] << 8)
        elif tag in _TEXT_FIELDS:
            setattr(image, _TEXT_FIELDS[tag], text(data[start:end]))
        elif tag == _NUMBER_OF_FRAMES:
            image.frames = frame_count(text(data[start:end]))
        elif tag in (_FLOAT_PIXELS, _DOUBLE_PIXELS):
            image.has_float_pixels = True
        pos = end
    else:
        return image

    if length == UNDEFINED:
        raise LayoutError("encapsulated pixel data in an uncompressed transfer syntax")
    end = start + length
    if end > size:
        raise LayoutError(f"pixel data is truncated ({size - start} of {length} bytes)")
    image.pixels = memoryview(data)[start:end]
    image.pixel_vr = vr.decode("ascii")
    image.pixel_element_start, image.pixel_value_start = pos, start
    pos = end
    while pos < size:  # rare: elements after Pixel Data
        tag, vr, value_start, length = element(data, pos)
        if length == UNDEFINED:
            raise SlowPath("undefined length element after pixel data")
        element_end = value_start + length
        if element_end > size:
            raise SlowPath("element runs past the end of the file")
        image.trailing.append((tag, pos, element_end))
        pos = element_end
    return image


def frame_count(value: str) -> int:
    """NumberOfFrames is IS text that may be empty (one frame)."""
    try:
        frames = int(value) if value else 1
    except ValueError:
        raise LayoutError(f"NumberOfFrames {value!r} is not an integer") from None
    if frames < 1:
        raise LayoutError(f"NumberOfFrames {frames} is not positive")
    return frames


def _read_with_pydicom(data: bytes) -> Image:
    """Implicit VR, big endian, or what the walker declined. Pixel Data is left raw to know its offset."""
    dataset = pydicom.dcmread(BytesIO(data))
    image = Image(
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
        frames=frame_count(str(dataset.get("NumberOfFrames", "") or "").strip()),
        has_float_pixels="FloatPixelData" in dataset or "DoubleFloatPixelData" in dataset,
        big_endian=not dataset.original_encoding[1],
    )
    image.dataset = dataset
    raw = dataset.get_item(PIXEL_DATA)
    if raw is None:
        return image
    if raw.length == UNDEFINED:
        raise LayoutError("encapsulated pixel data in an uncompressed transfer syntax")
    if raw.value_tell is None or raw.value is None or len(raw.value) != raw.length:
        raise LayoutError("pixel data is truncated")
    image.pixel_value_start = raw.value_tell
    image.pixels = memoryview(data)[raw.value_tell : raw.value_tell + raw.length]
    image.pixel_vr = raw.VR or "OW"
    later = [tag for tag in dataset.keys() if tag > PIXEL_DATA and tag != TRAILING_PADDING]
    if later:
        image.trailing = [(int(tag), 0, 0) for tag in later]  # the container declines these
    return image
