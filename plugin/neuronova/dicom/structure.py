"""A structural walk over a DICOM file: proves that no element runs past the end of the data.

pydicom reads truncated files without complaint (a value cut short just comes out short), and
Orthanc would store them; an upload must be refused instead, naming where the file ends.
"""

from __future__ import annotations

import struct
import zlib

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from ..errors import NotDicom

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD


def check_complete(data: bytes, dataset_offset: int, transfer_syntax: str) -> None:
    """Walk every element of the dataset that starts at `dataset_offset`; raise NotDicom if truncated."""
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        try:
            data, dataset_offset = zlib.decompress(data[dataset_offset:], -zlib.MAX_WBITS), 0
        except zlib.error as error:
            raise NotDicom(f"deflated dataset cannot be inflated: {error}") from None
    walker = _Walker(data, explicit=transfer_syntax != ImplicitVRLittleEndian,
                     little=transfer_syntax != ExplicitVRBigEndian)
    walker.elements(dataset_offset, len(data), until=None)


def meta_end(data: bytes) -> int:
    """Offset of the first dataset element after the Part 10 preamble and the (0002,xxxx) meta group."""
    walker = _Walker(data, explicit=True, little=True)
    offset = 132
    while offset + 8 <= len(data) and walker._tag(offset) >> 16 == 0x0002:
        offset = walker.elements(offset, len(data), until=None, single=True)
    return offset


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

    def elements(self, offset: int, end: int, until: int | None, single: bool = False) -> int:
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
            if length == _UNDEFINED:
                offset = self.items(value_offset, end)
            elif value_offset + length > end:
                raise self._truncated(tag, offset, value_offset + length - offset)
            else:
                offset = value_offset + length
            if single:
                return offset
        if until is not None:
            raise self._truncated(until, offset, 8)
        return offset

    def items(self, offset: int, end: int) -> int:
        """Walk the items of an undefined-length sequence or encapsulated pixel data."""
        while True:
            if end - offset < 8:
                raise self._truncated(_SEQUENCE_END, offset, 8)
            tag = self._tag(offset)
            (length,) = struct.unpack_from(self.order + "L", self.data, offset + 4)
            if tag == _SEQUENCE_END:
                return offset + 8
            if tag != _ITEM:
                raise NotDicom(f"malformed DICOM file: expected an item at byte {offset}")
            if length == _UNDEFINED:
                offset = self.elements(offset + 8, end, until=_ITEM_END)
            elif offset + 8 + length > end:
                raise self._truncated(tag, offset, 8 + length)
            else:
                offset += 8 + length
