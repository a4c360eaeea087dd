"""Byte-level views of Part-10 files, for a fuzzer: where the meta ends, where each top-level element's
tag, VR, length and value sit, and builders for files no DICOM library would write (deep sequences,
bombs, bodies larger than memory). Mutations must work on bytes: pydicom refuses to write most of them."""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import pydicom
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import generate_uid

LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
ALL_VRS = [b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT", b"PN", b"SH",
           b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US", *sorted(LONG_VRS)]
UNDEFINED = 0xFFFFFFFF
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
EXPLICIT_BE = "1.2.840.10008.1.2.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
PIXEL_DATA = (0x7FE0, 0x0010)


@dataclass(frozen=True)
class Element:
    """One top-level data element of the body (offsets into the whole file)."""
    group: int
    element: int
    vr: bytes | None         # None for implicit VR
    start: int               # offset of the tag
    length_offset: int       # offset of the length field
    length_size: int         # 2 or 4
    value_offset: int
    length: int              # as declared (UNDEFINED for undefined length)

    @property
    def tag(self) -> tuple[int, int]:
        return (self.group, self.element)


def split_meta(data: bytes) -> tuple[int, str]:
    """(offset where the body starts, the meta's Transfer Syntax UID). Raises ValueError on a broken meta."""
    meta, offset = read_meta(data)
    return offset, str(meta.TransferSyntaxUID)


def read_meta(data: bytes) -> tuple[pydicom.dataset.FileMetaDataset, int]:
    """(the file meta, offset where the body starts). Raises on a broken meta."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise ValueError("no DICM preamble")
    stream = io.BytesIO(data)
    stream.seek(132)
    meta = pydicom.filereader._read_file_meta_info(stream)
    if "TransferSyntaxUID" not in meta:
        raise ValueError("no Transfer Syntax UID in the file meta")
    return meta, stream.tell()


def walk(data: bytes) -> list[Element]:
    """The body's top-level elements, up to the first one of undefined length (included) or the first
    that does not fit; implicit / explicit, little / big endian after the meta. Never raises."""
    try:
        offset, syntax = split_meta(data)
    except Exception:
        return []
    explicit = syntax != IMPLICIT_LE
    endian = ">" if syntax == EXPLICIT_BE else "<"
    if syntax == DEFLATED:
        return []
    elements = []
    while offset + 8 <= len(data):
        group, element = struct.unpack(endian + "HH", data[offset:offset + 4])
        if explicit:
            vr = data[offset + 4:offset + 6]
            if vr in LONG_VRS:
                length_offset, length_size = offset + 8, 4
            else:
                length_offset, length_size = offset + 6, 2
        else:
            vr, length_offset, length_size = None, offset + 4, 4
        if length_offset + length_size > len(data):
            break
        fmt = endian + ("I" if length_size == 4 else "H")
        length = struct.unpack(fmt, data[length_offset:length_offset + length_size])[0]
        value_offset = length_offset + length_size
        elements.append(Element(group, element, vr, offset, length_offset, length_size, value_offset, length))
        if length == UNDEFINED or value_offset + length > len(data):
            break
        offset = value_offset + length
    return elements


def pixel_data(elements: list[Element]) -> Element | None:
    return next((e for e in elements if e.tag == PIXEL_DATA), None)


def with_fresh_uids(data: bytes, new_uid=generate_uid) -> bytes:
    """The file with new Study / Series / SOP Instance UIDs (meta too): each case is its own instance."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = new_uid(), new_uid()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = new_uid()
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


def replace_meta(data: bytes, **meta_values: str) -> bytes:
    """The same body behind a rewritten file meta (e.g. a Transfer Syntax UID the body is not in)."""
    meta, offset = read_meta(data)
    for keyword, value in meta_values.items():
        setattr(meta, keyword, value)
    out = io.BytesIO()
    out.write(data[:128] + b"DICM")
    write_file_meta_info(pydicom.filebase.DicomFileLike(out), meta, enforce_standard=True)
    return out.getvalue() + data[offset:]


def explicit_header(group: int, element: int, vr: bytes, length: int) -> bytes:
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, element, vr, 0, length)
    return struct.pack("<HH2sH", group, element, vr, length)


def nested_sequences(levels: int) -> bytes:
    """(0040,A730) Content Sequence nested `levels` deep, every sequence and item of undefined length."""
    opening = explicit_header(0x0040, 0xA730, b"SQ", UNDEFINED) + struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
    closing = struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    return opening * levels + closing * levels


def insert_element(data: bytes, encoded: bytes, group: int, element: int) -> bytes:
    """`encoded` (explicit VR LE) inserted where tag (group, element) belongs among the top-level elements."""
    for e in walk(data):
        if e.tag > (group, element):
            return data[:e.start] + encoded + data[e.start:]
    return data + encoded


def big_file_prefix(pixel_bytes: int, syntax: str = EXPLICIT_LE) -> bytes:
    """A real CT header (pydicom-data CT_small.dcm) claiming `pixel_bytes` of 16-bit frames, up to and with
    the Pixel Data element's header: append `pixel_bytes` bytes and it is a complete file, without ever
    holding it in memory."""
    dataset = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    del dataset.PixelData
    frame = dataset.Rows * dataset.Columns * 2
    dataset.NumberOfFrames = max(1, pixel_bytes // frame)
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.file_meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue() + explicit_header(0x7FE0, 0x0010, b"OW", pixel_bytes)


class ZeroTail(io.RawIOBase):
    """A request body `prefix` + `size` zero bytes, streamed (requests sends it with a Content-Length)."""

    def __init__(self, prefix: bytes, size: int):
        self.prefix, self.total, self.position = prefix, len(prefix) + size, 0

    def __len__(self) -> int:
        return self.total

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = self.total - self.position if size is None or size < 0 else min(size, self.total - self.position)
        start, self.position = self.position, self.position + size
        head = self.prefix[start:start + size] if start < len(self.prefix) else b""
        return head + bytes(size - len(head))


def deflate_bomb(inflated_bytes: int) -> bytes:
    """A Deflated Explicit VR Little Endian file whose body inflates to about `inflated_bytes` (zeros of
    Pixel Data), compressed chunk by chunk so the campaign never holds the inflated body."""
    relabelled = replace_meta(big_file_prefix(inflated_bytes), TransferSyntaxUID=DEFLATED)
    offset, _ = split_meta(relabelled)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [relabelled[:offset], compressor.compress(relabelled[offset:])]
    chunk = bytes(1 << 20)
    left = inflated_bytes
    while left > 0:
        parts.append(compressor.compress(chunk[:min(left, len(chunk))]))
        left -= len(chunk)
    parts.append(compressor.flush())
    return b"".join(parts)


def deflated_copy(data: bytes) -> bytes:
    """A real file re-encoded as Deflated Explicit VR Little Endian (a valid file)."""
    dataset = pydicom.dcmread(io.BytesIO(data))
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        raise ValueError("compressed pixel data is not re-encoded")
    dataset.file_meta.TransferSyntaxUID = DEFLATED
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()
