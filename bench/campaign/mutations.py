"""The malformed-file generator: real files (pydicom-data) and mutations of them, the same for a given seed.

Two sets: the *targeted* cases (every defect class the hardening issue names, always present, a few bytes
of each) and `count` *random* mutations (kind round-robin, base file, offsets and values from the seed).
Every case gets fresh UIDs before it is mutated, so that each one is its own instance in Orthanc."""

from __future__ import annotations

import io
import random
import struct
import zipfile
import zlib
from dataclasses import dataclass, field

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from . import dicom_bytes as db

DICOM_PATHS = ("rest", "upload", "stow", "cstore")
ZIP_PATHS = ("rest", "upload")
# Small real files of every kind: explicit / implicit / big endian, CT / MR / RGB / multi-frame / 32-bit /
# 1-bit, and compressed ones (J2K, RLE, JPEG-LS) and a deflated one.
BASES = ("CT_small.dcm", "MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "SC_rgb.dcm",
         "emri_small.dcm", "rtdose.dcm", "JPEG2000.dcm", "SC_rgb_rle.dcm", "MR_small_jpeg_ls_lossless.dcm",
         "SC_rgb_2frame.dcm", "liver_1frame.dcm", "image_dfl.dcm")
EXPLICIT_BASES = ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "emri_small.dcm", "SC_rgb_2frame.dcm")
NATIVE_BASES = (*EXPLICIT_BASES, "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "rtdose.dcm")
WALKABLE_BASES = tuple(b for b in BASES if b != "image_dfl.dcm")  # a deflated body has no element offsets
RANDOM_KINDS = ("truncate_header", "truncate_pixels", "bitflip_header", "bitflip_pixels", "wrong_length",
                "wrong_vr", "unknown_vr", "huge_length")
SYNTAX_LIES = {"jpeg_baseline": "1.2.840.10008.1.2.4.50", "jpeg_lossless": "1.2.840.10008.1.2.4.70",
               "j2k": "1.2.840.10008.1.2.4.90", "htj2k": "1.2.840.10008.1.2.4.201", "rle": "1.2.840.10008.1.2.5",
               "implicit": db.IMPLICIT_LE, "big_endian": db.EXPLICIT_BE, "deflated": db.DEFLATED}
NESTING_LEVELS = (48, 500, 5000)


@dataclass
class Case:
    name: str                     # unique, e.g. "nested_sq/5000/CT_small.dcm"
    kind: str                     # the mutation kind (a row of the report)
    data: bytes
    content_type: str = "application/dicom"
    paths: tuple[str, ...] = DICOM_PATHS
    note: str = ""
    valid: bool = False           # a well-formed file: must be accepted, byte-exact
    as_received: bool = False     # header values the codecs cannot honour: must be kept on disk as received
    meta: dict = field(default_factory=dict)


def base_file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


class Generator:
    def __init__(self, seed: int):
        self.seed = seed
        self.rng = random.Random(seed)
        self.uids = 0

    def new_uid(self) -> str:
        """UIDs from the seed too, so that a case's bytes (and the offsets the mutations pick) repeat."""
        self.uids += 1
        return generate_uid(entropy_srcs=["neuronova-campaign", str(self.seed), str(self.uids)])

    def fresh(self, base: str) -> bytes:
        return db.with_fresh_uids(base_file(base), self.new_uid)

    # -- targeted ----------------------------------------------------------------------------------------

    def targeted(self, quick: bool = False) -> list[Case]:
        cases = [Case(f"control/{b}", "control", self.fresh(b), valid=True) for b in BASES]
        ct = "CT_small.dcm"
        for levels in NESTING_LEVELS:
            encoded = db.nested_sequences(levels)
            cases.append(Case(f"nested_sq/{levels}/{ct}", f"nested_sq_{levels}",
                              db.insert_element(self.fresh(ct), encoded, 0x0040, 0xA730),
                              note=f"{levels} levels of undefined-length sequences"))
        for label, syntax in SYNTAX_LIES.items():
            for base in (ct, "MR_small_implicit.dcm") if label in ("implicit",) else (ct,):
                if label == "implicit" and base != ct:
                    continue
                cases.append(Case(f"syntax_lie/{label}/{base}", "syntax_lie",
                                  db.replace_meta(self.fresh(base), TransferSyntaxUID=syntax),
                                  note=f"meta says {syntax}, body is {db.split_meta(self.fresh(base))[1]}"))
        cases.append(Case("syntax_lie/explicit/MR_small_implicit.dcm", "syntax_lie",
                          db.replace_meta(self.fresh("MR_small_implicit.dcm"), TransferSyntaxUID=db.EXPLICIT_LE),
                          note="meta says explicit VR, body is implicit"))
        cases += [
            Case(f"invalid_value/PixelRepresentation=2/{ct}", "pixel_representation_2",
                 self.edited(ct, PixelRepresentation=2), note="Pixel Representation 2 (only 0/1 exist)",
                 as_received=True),
            Case("invalid_value/PlanarConfiguration=2/SC_rgb.dcm", "planar_configuration_2",
                 self.edited("SC_rgb.dcm", PlanarConfiguration=2), note="Planar Configuration 2 (only 0/1 exist)",
                 as_received=True),
            Case(f"invalid_value/BitsStored=20/{ct}", "bits_stored_gt_allocated",
                 self.edited(ct, BitsStored=20, HighBit=19), note="Bits Stored 20 > Bits Allocated 16",
                 as_received=True),
            Case("invalid_value/BitsStored=12,HighBit=15/MR_small.dcm", "bits_stored_gt_allocated",
                 self.edited("MR_small.dcm", BitsStored=12, HighBit=15), note="High Bit not Bits Stored - 1"),
        ]
        for frames in (0, 3, 11, -1):
            cases.append(Case(f"odd_frames/NumberOfFrames={frames}/emri_small.dcm", "odd_frames",
                              self.edited("emri_small.dcm", NumberOfFrames=frames),
                              note=f"NumberOfFrames {frames}, pixel data holds 10"))
        cases.append(Case(f"odd_frames/NumberOfFrames=2/{ct}", "odd_frames", self.edited(ct, NumberOfFrames=2),
                          note="NumberOfFrames 2, pixel data holds 1"))
        for base in (ct, "MR_small_bigendian.dcm"):
            data = self.fresh(base)
            pixels = db.pixel_data(db.walk(data))
            cases.append(Case(f"huge_length/PixelData=0xFFFFFFF0/{base}", "huge_length",
                              self.set_length(data, pixels, 0xFFFFFFF0, base), note="Pixel Data declares 4 GB"))
        for base in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm", "emri_small.dcm"):
            cases.append(Case(f"deflated/{base}", "deflated", db.deflated_copy(self.fresh(base)), valid=True))
        cases.append(Case("deflate_bomb/20MB/CT_small.dcm", "deflate_bomb", db.deflate_bomb(20_000_000),
                          valid=True, note="20 MB of zeros deflated to ~20 kB (the 1 GB bomb is a memory probe)"))
        cases += self.zip_cases()
        return cases

    def edited(self, base: str, **values) -> bytes:
        dataset = pydicom.dcmread(io.BytesIO(self.fresh(base)))
        for keyword, value in values.items():
            setattr(dataset, keyword, value)
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        return out.getvalue()

    @staticmethod
    def set_length(data: bytes, element: db.Element, length: int, base: str) -> bytes:
        endian = ">" if base.endswith("bigendian.dcm") else "<"
        fmt = endian + ("I" if element.length_size == 4 else "H")
        end = element.length_offset + element.length_size
        return data[:element.length_offset] + struct.pack(fmt, length) + data[end:]

    # -- ZIPs --------------------------------------------------------------------------------------------

    def zip_cases(self) -> list[Case]:
        good = [self.fresh(b) for b in ("CT_small.dcm", "MR_small.dcm", "SC_rgb.dcm")]
        members = lambda middle: [("a.dcm", good[0], zipfile.ZIP_DEFLATED), middle,  # noqa: E731
                                  ("c.dcm", good[2], zipfile.ZIP_DEFLATED)]
        cases = [Case("zip/good", "zip_good", make_zip(members(("b.dcm", good[1], zipfile.ZIP_DEFLATED))),
                      "application/zip", ZIP_PATHS, "three good members", valid=True)]
        fresh = self.fresh("MR_small.dcm")
        corrupt = make_zip(members(("b.dcm", fresh, zipfile.ZIP_DEFLATED)))
        cases.append(Case("zip/corrupt_deflate", "zip_corrupt_deflate", corrupt_member(corrupt, 1),
                          "application/zip", ZIP_PATHS, "middle member's deflate stream overwritten"))
        fresh = self.fresh("MR_small.dcm")
        cases.append(Case("zip/lzma", "zip_lzma", make_zip(members(("b.dcm", fresh, zipfile.ZIP_LZMA))),
                          "application/zip", ZIP_PATHS, "middle member LZMA (valid)"))
        fresh = self.fresh("MR_small.dcm")
        cases.append(Case("zip/corrupt_lzma", "zip_corrupt_lzma",
                          corrupt_member(make_zip(members(("b.dcm", fresh, zipfile.ZIP_LZMA))), 1),
                          "application/zip", ZIP_PATHS, "middle member's LZMA stream overwritten"))
        fresh = self.fresh("MR_small.dcm")
        cases.append(Case("zip/unsupported_method", "zip_unsupported_method",
                          set_member_method(make_zip(members(("b.dcm", fresh, zipfile.ZIP_STORED))), 1, 98),
                          "application/zip", ZIP_PATHS, "middle member compression method 98 (PPMd)"))
        fresh = self.fresh("MR_small.dcm")
        cases.append(Case("zip/empty_name", "zip_bad_name",
                          make_zip(members(("", fresh, zipfile.ZIP_DEFLATED))),
                          "application/zip", ZIP_PATHS, "middle member named ''"))
        fresh = self.fresh("MR_small.dcm")
        cases.append(Case("zip/undecodable_name", "zip_bad_name",
                          undecodable_name(make_zip(members(("bX.dcm", fresh, zipfile.ZIP_DEFLATED))), b"bX.dcm"),
                          "application/zip", ZIP_PATHS, "middle member name not UTF-8 with the UTF-8 flag set"))
        fresh = self.fresh("MR_small.dcm")
        cases.append(Case("zip/not_dicom_member", "zip_bad_member",
                          make_zip(members(("notes.txt", b"not a DICOM file\n" * 10, zipfile.ZIP_DEFLATED))),
                          "application/zip", ZIP_PATHS, "middle member a text file"))
        truncated = make_zip(members(("b.dcm", fresh, zipfile.ZIP_DEFLATED)))
        cases.append(Case("zip/truncated_archive", "zip_truncated", truncated[:len(truncated) // 2],
                          "application/zip", ZIP_PATHS, "archive cut in half (no central directory)"))
        outer = {sop_of(good[0]): good[0], sop_of(good[2]): good[2]}
        for case in cases:  # the outer members are always good; the middle one too where it is valid
            case.meta["good_members"] = {} if case.kind == "zip_truncated" else dict(outer)
            if case.kind == "zip_good":
                case.meta["good_members"][sop_of(good[1])] = good[1]
        lzma = next(c for c in cases if c.kind == "zip_lzma")
        lzma.meta["good_members"].update({sop_of(m): m for m in zip_members(lzma.data)})
        return cases

    # -- random ------------------------------------------------------------------------------------------

    def random_cases(self, count: int) -> list[Case]:
        cases = []
        for index in range(count):
            kind = RANDOM_KINDS[index % len(RANDOM_KINDS)]
            pool = EXPLICIT_BASES if kind in ("wrong_vr", "unknown_vr") else \
                NATIVE_BASES if kind == "bitflip_pixels" else \
                WALKABLE_BASES if kind in ("wrong_length", "huge_length") else BASES
            base = self.rng.choice(pool)
            data, note = getattr(self, "mutate_" + kind)(self.fresh(base))
            cases.append(Case(f"{kind}/{index}/{base}", kind, data, note=note))
        return cases

    def body_range(self, data: bytes) -> tuple[int, int]:
        """(start of the body, start of the pixel data value or the end)."""
        try:
            start, _ = db.split_meta(data)
        except Exception:
            start = 132
        pixels = db.pixel_data(db.walk(data))
        return start, pixels.value_offset if pixels else len(data)

    def mutate_truncate_header(self, data: bytes):
        start, end = self.body_range(data)
        cut = self.rng.randrange(0, end)
        return data[:cut], f"cut at byte {cut} of {len(data)} (header)"

    def mutate_truncate_pixels(self, data: bytes):
        _, end = self.body_range(data)
        cut = self.rng.randrange(min(end, len(data) - 1), len(data))
        return data[:cut], f"cut at byte {cut} of {len(data)} (pixel data)"

    def flip(self, data: bytes, low: int, high: int, bits: int) -> tuple[bytes, list[int]]:
        out = bytearray(data)
        where = sorted(self.rng.randrange(low, high) for _ in range(bits))
        for offset in where:
            out[offset] ^= 1 << self.rng.randrange(8)
        return bytes(out), where

    def mutate_bitflip_header(self, data: bytes):
        start, end = self.body_range(data)
        flipped, where = self.flip(data, 0, end, self.rng.choice((1, 2, 4, 8)))
        return flipped, f"bits flipped at {where}"

    def mutate_bitflip_pixels(self, data: bytes):
        _, end = self.body_range(data)
        if end >= len(data):
            return self.mutate_bitflip_header(data)
        flipped, where = self.flip(data, end, len(data), self.rng.choice((1, 8, 64)))
        return flipped, f"{len(where)} bits flipped in the pixel data"

    def pick_element(self, data: bytes, vr_only: bool = False) -> db.Element | None:
        elements = [e for e in db.walk(data) if not vr_only or e.vr is not None]
        return self.rng.choice(elements) if elements else None

    def mutate_wrong_length(self, data: bytes):
        element = self.pick_element(data)
        if element is None:
            return self.mutate_truncate_header(data)
        limit = 0xFFFF if element.length_size == 2 else 0xFFFFFFFF
        length = min(limit, max(0, element.length + self.rng.choice((-3, -2, -1, 1, 2, 3, 7, 100, 1001))))
        return self.replace_length(data, element, length), \
            f"({element.group:04X},{element.element:04X}) length {element.length} -> {length}"

    def mutate_huge_length(self, data: bytes):
        element = self.pick_element(data)
        if element is None:
            return self.mutate_truncate_header(data)
        length = 0xFFFF if element.length_size == 2 else self.rng.choice((0x7FFFFFFF, 0xFFFFFFF0, 0xFFFFFFFE))
        return self.replace_length(data, element, length), \
            f"({element.group:04X},{element.element:04X}) length {element.length} -> {length:#x}"

    def replace_length(self, data: bytes, element: db.Element, length: int) -> bytes:
        try:
            big = db.split_meta(data)[1] == db.EXPLICIT_BE and element.group != 2
        except Exception:
            big = False
        fmt = (">" if big else "<") + ("I" if element.length_size == 4 else "H")
        return data[:element.length_offset] + struct.pack(fmt, length) + \
            data[element.length_offset + element.length_size:]

    def mutate_wrong_vr(self, data: bytes):
        element = self.pick_element(data, vr_only=True)
        if element is None:
            return self.mutate_truncate_header(data)
        same_form = [vr for vr in db.ALL_VRS if (vr in db.LONG_VRS) == (element.vr in db.LONG_VRS) and vr != element.vr]
        vr = self.rng.choice(same_form)
        return data[:element.start + 4] + vr + data[element.start + 6:], \
            f"({element.group:04X},{element.element:04X}) VR {element.vr.decode()} -> {vr.decode()}"

    def mutate_unknown_vr(self, data: bytes):
        element = self.pick_element(data, vr_only=True)
        if element is None:
            return self.mutate_truncate_header(data)
        vr = self.rng.choice((b"ZZ", b"??", b"\x00\x00", b"xy", b"Q1"))
        return data[:element.start + 4] + vr + data[element.start + 6:], \
            f"({element.group:04X},{element.element:04X}) VR {element.vr.decode()} -> {vr!r}"


def sop_of(data: bytes) -> str:
    return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True).SOPInstanceUID)


def zip_members(data: bytes) -> list[bytes]:
    archive = zipfile.ZipFile(io.BytesIO(data))
    return [archive.read(info) for info in archive.infolist()]


def make_zip(members: list[tuple[str, bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data, method in members:
            info = zipfile.ZipInfo(name or "placeholder", date_time=(2026, 12, 1, 0, 0, 0))
            info.compress_type = method
            archive.writestr(info, data)
    out = buffer.getvalue()
    for name, _, _ in members:
        if name == "":  # zipfile refuses an empty name: write a placeholder of the same length, then blank it
            out = rename_member(out, b"placeholder", b"")
    return out


def _local_headers(data: bytes) -> list[int]:
    offsets, position = [], 0
    while (position := data.find(b"PK\x03\x04", position)) >= 0:
        offsets.append(position)
        position += 4
    return offsets


def corrupt_member(data: bytes, index: int) -> bytes:
    """Overwrite the middle of member `index`'s compressed stream with 0xFF bytes (the CRC and sizes stay)."""
    header = _local_headers(data)[index]
    name_length, extra_length = struct.unpack("<HH", data[header + 26:header + 30])
    compressed = struct.unpack("<I", data[header + 18:header + 22])[0]
    start = header + 30 + name_length + extra_length
    middle = start + max(0, compressed // 3)
    span = max(1, compressed // 3)
    return data[:middle] + b"\xff" * span + data[middle + span:]


def set_member_method(data: bytes, index: int, method: int) -> bytes:
    """Member `index` declared with compression `method` (local header and central directory)."""
    out = bytearray(data)
    header = _local_headers(data)[index]
    out[header + 8:header + 10] = struct.pack("<H", method)
    central = [p for p in range(len(data)) if data.startswith(b"PK\x01\x02", p)][index]
    out[central + 10:central + 12] = struct.pack("<H", method)
    return bytes(out)


def rename_member(data: bytes, old: bytes, new: bytes) -> bytes:
    """Member `old` renamed `new` in the local header and the central directory (offsets fixed by a rewrite
    of the archive's end records is not needed: names are the same length or the ZIP is re-indexed)."""
    if len(new) == len(old):
        return data.replace(old, new)
    # Different length: rebuild by hand around the name fields.
    out = bytearray()
    position = 0
    local_shift: dict[int, int] = {}
    shift = 0
    for header in _local_headers(data):
        name_length = struct.unpack("<H", data[header + 26:header + 28])[0]
        name = data[header + 30:header + 30 + name_length]
        out += data[position:header]
        local_shift[header] = shift
        if name == old:
            out += data[header:header + 26] + struct.pack("<H", len(new)) + data[header + 28:header + 30] + new
            shift += len(new) - len(old)
        else:
            out += data[header:header + 30 + name_length]
        position = header + 30 + name_length
    central_start = data.find(b"PK\x01\x02", position)
    out += data[position:central_start]
    new_central_start = len(out)
    position = central_start
    while data.startswith(b"PK\x01\x02", position):
        name_length, extra_length, comment_length = struct.unpack("<HHH", data[position + 28:position + 34])
        local = struct.unpack("<I", data[position + 42:position + 46])[0]
        name = data[position + 46:position + 46 + name_length]
        fixed = bytearray(data[position:position + 46])
        fixed[42:46] = struct.pack("<I", local + local_shift.get(local, 0))
        if name == old:
            fixed[28:30] = struct.pack("<H", len(new))
            name = new
        tail = position + 46 + name_length
        out += fixed + name + data[tail:tail + extra_length + comment_length]
        position += 46 + name_length + extra_length + comment_length
    end = bytearray(data[position:])
    end[12:16] = struct.pack("<I", len(out) - new_central_start)
    end[16:20] = struct.pack("<I", new_central_start)
    return bytes(out + end)


def undecodable_name(data: bytes, name: bytes) -> bytes:
    """Member `name` (same length) renamed to bytes that are not UTF-8, with the UTF-8 flag (bit 11) set."""
    bad = b"\xff\xfe" + name[2:]
    out = bytearray(data.replace(name, bad))
    for header in _local_headers(bytes(out)):
        if out[header + 30:header + 30 + len(bad)] == bad:
            flags = struct.unpack("<H", out[header + 6:header + 8])[0] | 0x800
            out[header + 6:header + 8] = struct.pack("<H", flags)
    position = 0
    while (position := bytes(out).find(b"PK\x01\x02", position)) >= 0:
        if out[position + 46:position + 46 + len(bad)] == bad:
            flags = struct.unpack("<H", out[position + 8:position + 10])[0] | 0x800
            out[position + 8:position + 10] = struct.pack("<H", flags)
        position += 4
    return bytes(out)


def zip_with_big_member(member_prefix: bytes, member_bytes: int) -> bytes:
    """A ZIP whose one member is `member_prefix` + `member_bytes` zeros, deflated chunk by chunk (a 1 GB
    member makes a ~1 MB ZIP) without holding the member in memory; sizes and CRC declared truthfully."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    crc = zlib.crc32(member_prefix)
    parts = [compressor.compress(member_prefix)]
    chunk = bytes(1 << 20)
    left = member_bytes
    while left > 0:
        piece = chunk[:min(left, len(chunk))]
        crc = zlib.crc32(piece, crc)
        parts.append(compressor.compress(piece))
        left -= len(piece)
    parts.append(compressor.flush())
    compressed = b"".join(parts)
    size = len(member_prefix) + member_bytes
    name = b"big.dcm"
    zip64 = size >= 0xFFFFFFFF
    local_extra = struct.pack("<HHQQ", 1, 16, size, len(compressed)) if zip64 else b""
    declared = (0xFFFFFFFF, 0xFFFFFFFF) if zip64 else (len(compressed), size)
    local = struct.pack("<IHHHHHIII HH".replace(" ", ""), 0x04034B50, 45 if zip64 else 20, 0, 8, 0, 0x5A21, crc,
                        *declared, len(name), len(local_extra)) + name + local_extra
    central_extra = struct.pack("<HHQQ", 1, 16, size, len(compressed)) if zip64 else b""
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45 if zip64 else 20, 45 if zip64 else 20, 0, 8, 0,
                          0x5A21, crc, *declared, len(name), len(central_extra), 0, 0, 0, 0, 0) + name + central_extra
    central_offset = len(local) + len(compressed)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), central_offset, 0)
    return local + compressed + central + end
