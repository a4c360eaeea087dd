"""A structural walk over a DICOM file, before anything else parses it: proves that no element runs
past the end of the data and that sequences do not nest deeper than any real object does.

pydicom reads truncated files without complaint (a value cut short just comes out short), and
Orthanc would store them; an upload must be refused instead, naming where the file ends. Sequences
nested 48 deep kill Orthanc (DCMTK's recursion, measured on 1.10.1, plugin or not), and 5000 deep
overflow the stack of its HTTP threads in any recursive parser: the walk stops at MAX_SEQUENCE_DEPTH.
A deflated dataset is inflated only up to a limit: a 280 kB file can inflate to more than a gigabyte.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.datadict import dictionary_VR
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from ..errors import NotDicom, PayloadTooLarge

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_DATA = 0x7FE00010
MAX_SEQUENCE_DEPTH = 16  # SR content trees and RT objects stay well below it; DCMTK dies at 48


def check_complete(data: bytes, dataset_offset: int, transfer_syntax: str, max_inflated: int) -> None:
    """Walk every element of the dataset that starts at `dataset_offset`; raise NotDicom if truncated
    or nested too deep, PayloadTooLarge if a deflated dataset inflates beyond `max_inflated` bytes."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        data, dataset_offset = inflate(data[dataset_offset:], max_inflated), 0
    walker = _Walker(data, explicit=transfer_syntax != ImplicitVRLittleEndian,
                     little=transfer_syntax != ExplicitVRBigEndian)
    walker.elements(dataset_offset, len(data), until=None)


def inflate(deflated: bytes, limit: int) -> bytes:
    """A deflated dataset, inflated only once it is known to fit in `limit` bytes: a first pass counts
    the inflated bytes 16 MB at a time, keeping none (a bomb costs 16 MB, not the limit)."""
    if _inflated_size(deflated, limit) > limit:
        raise PayloadTooLarge(f"deflated dataset inflates beyond {limit} bytes (NeuroNova.Upload.MaxInflatedSizeMB)")
    try:
        return zlib.decompress(deflated, -zlib.MAX_WBITS)
    except zlib.error as error:  # e.g. a stream cut short
        raise NotDicom(f"deflated dataset cannot be inflated: {error}") from None


def _inflated_size(deflated: bytes, limit: int) -> int:
    """How many bytes the stream inflates to, counted up to just past `limit`."""
    inflater, size, rest = zlib.decompressobj(-zlib.MAX_WBITS), 0, deflated
    try:
        while rest and size <= limit:
            size += len(inflater.decompress(rest, _INFLATE_CHUNK))
            rest = inflater.unconsumed_tail
        return size + len(inflater.flush()) if size <= limit else size
    except zlib.error as error:
        raise NotDicom(f"deflated dataset cannot be inflated: {error}") from None


_INFLATE_CHUNK = 16 * 1024 * 1024


def meta_end(data: bytes) -> int:
    """Offset of the first dataset element after the Part 10 preamble and the (0002,xxxx) meta group."""
    walker = _Walker(data, explicit=True, little=True)
    offset = 132
    while offset + 8 <= len(data) and walker._tag(offset) >> 16 == 0x0002:
        offset = walker.elements(offset, len(data), until=None, single=True)
    return offset


def _is_sequence(tag: int) -> bool:
    """In Implicit VR only the data dictionary tells a sequence (as DCMTK and pydicom read it)."""
    try:
        return dictionary_VR(tag) == "SQ"
    except KeyError:
        return False


class _Walker:
    def __init__(self, data: bytes, explicit: bool, little: bool):
        self.data = data
        self.explicit = explicit
        self.order = "<" if little else ">"

    def _truncated(self, tag: int, offset: int, wanted: int) -> NotDicom:
        available = max(len(self.data) - offset, 0)
        return NotDicom(
            f"truncated DICOM file: element ({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {offset} "
            f"needs {wanted} bytes, only {available} remain"
        )

    def _tag(self, offset: int) -> int:
        group, element = struct.unpack_from(self.order + "HH", self.data, offset)
        return (group << 16) | element

    def elements(self, offset: int, end: int, until: int | None, single: bool = False, depth: int = 0) -> int:
        """Walk elements from offset to end (or to the `until` delimiter, or just one); return the offset after."""
        while offset < end:
            if end - offset < 8:
                raise self._truncated(0, offset, 8)
            tag = self._tag(offset)
            if tag == until:
                return offset + 8
            if tag in (_ITEM, _ITEM_END, _SEQUENCE_END):
                raise NotDicom(f"malformed DICOM file: unexpected delimiter at byte {offset}")
            vr = self.data[offset + 4:offset + 6] if self.explicit else b""
            if vr in _LONG_VRS:
                if end - offset < 12:
                    raise self._truncated(tag, offset, 12)
                (length,) = struct.unpack_from(self.order + "L", self.data, offset + 8)
                value_offset = offset + 12
            elif self.explicit:
                (length,) = struct.unpack_from(self.order + "H", self.data, offset + 6)
                value_offset = offset + 8
            else:
                (length,) = struct.unpack_from(self.order + "L", self.data, offset + 4)
                value_offset = offset + 8
            sequence = length == _UNDEFINED or vr == b"SQ" or not self.explicit and _is_sequence(tag)
            if sequence and depth >= MAX_SEQUENCE_DEPTH:
                raise NotDicom(f"({tag >> 16:04X},{tag & 0xFFFF:04X}) at byte {offset}: sequences nested more "
                               f"than {MAX_SEQUENCE_DEPTH} deep are refused")
            if length == _UNDEFINED:  # a sequence, or encapsulated Pixel Data (its items are fragments)
                offset = self.items(value_offset, end, depth + 1, fragments=tag == _PIXEL_DATA)
            elif value_offset + length > end:
                raise self._truncated(tag, offset, value_offset + length - offset)
            else:
                if sequence and length:
                    self.items(value_offset, value_offset + length, depth + 1, defined=True)
                offset = value_offset + length
            if single:
                return offset
        if until is not None:
            raise self._truncated(until, offset, 8)
        return offset

    def items(self, offset: int, end: int, depth: int, defined: bool = False, fragments: bool = False) -> int:
        """Walk the items of a sequence (`defined`: its length ends it, else its delimiter), each
        item's elements too, or the fragments of encapsulated Pixel Data."""
        while True:
            if defined and offset == end:
                return offset
            if end - offset < 8:
                raise self._truncated(_SEQUENCE_END, offset, 8)
            tag = self._tag(offset)
            (length,) = struct.unpack_from(self.order + "L", self.data, offset + 4)
            if tag == _SEQUENCE_END:
                return offset + 8
            if tag != _ITEM:
                raise NotDicom(f"malformed DICOM file: expected an item at byte {offset}")
            if length == _UNDEFINED:
                offset = self.elements(offset + 8, end, until=_ITEM_END, depth=depth)
            elif offset + 8 + length > end:
                raise self._truncated(tag, offset, 8 + length)
            else:
                if not fragments:
                    self.elements(offset + 8, offset + 8 + length, until=None, depth=depth)
                offset += 8 + length
