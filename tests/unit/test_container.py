"""Storage container tests on real DICOM files from pydicom and pydicom-data.

A container (what `pack` answers) must be a valid HTJ2K (or JPEG 2000) Part-10 file whose pixels an
independent decoder (pydicom with pylibjpeg / pylibjpeg-openjpeg, not the imagecodecs backends that
encoded them) decodes to the original values, and `restore` must give the received bytes back
exactly. Whatever cannot be packed is stored as received (Packed.data is None), and pack never raises.
"""

from __future__ import annotations

import logging
import struct
import sys
import tracemalloc
import warnings
from io import BytesIO

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import generate_fragments, parse_basic_offsets
from pydicom.pixels import get_decoder, pixel_array
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
)

from neuronova.storage import container, layout
from neuronova.storage.codec import CodecUnavailable, htj2k, j2k
from neuronova.storage.container import ContainerError, Packed, PackSettings, pack, restore

DEFAULT = PackSettings()
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"
RESTORE_GROUP = 0x7FE3


def _file(name: str) -> bytes:
    path = get_testdata_file(name)
    assert path, f"test file {name} is not installed (pydicom-data)"
    with open(path, "rb") as handle:
        return handle.read()


def _read(data: bytes) -> pydicom.FileDataset:
    return pydicom.dcmread(BytesIO(data))


def _write(ds: pydicom.Dataset, syntax=None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _stored_values(arr: np.ndarray, ds: pydicom.Dataset) -> np.ndarray:
    """Only Bits Stored bits count: the rest cleared (unsigned) or sign-extended (signed)."""
    stored, allocated = ds.BitsStored, ds.BitsAllocated
    if stored < allocated:
        if ds.PixelRepresentation:
            shift = 64 - stored
            arr = ((arr.astype(np.int64) << shift) >> shift).astype(arr.dtype)
        else:
            arr = arr & ((1 << stored) - 1)
    return arr.astype(arr.dtype.newbyteorder("="))


def _original_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The received file's stored values (native pixel data, no colour conversion)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd test files
        return _stored_values(pixel_array(ds, as_rgb=False), ds)


def _independent_pixels(ds: pydicom.Dataset) -> np.ndarray:
    """The container's pixels as pylibjpeg decodes them.

    For YBR_RCT the JPEG 2000 decoder undoes the reversible colour transform itself, so pydicom
    hands back RGB whatever as_rgb says: the values must be the original RGB ones.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return _stored_values(pixel_array(ds, decoding_plugin="pylibjpeg", as_rgb=False), ds)


def _flatten(ds: pydicom.Dataset, path=()) -> dict:
    """Every element except those the container has to change, keyed by its path, values normalised to LE."""
    big_endian = ds.original_encoding[1] is False
    out = {}
    for element in ds:
        key = path + (int(element.tag),)
        if (element.tag in (0x7FE00010, 0x00280004, 0x00280006, 0xFFFCFFFC)
                or (element.tag.element == 0 and element.tag.group > 2) or element.tag.group == RESTORE_GROUP):
            continue
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                out.update(_flatten(item, key + (index,)))
            continue
        value = element.value
        width = {"OW": 2, "OL": 4, "OF": 4, "OD": 8}.get(element.VR)
        if big_endian and width and isinstance(value, bytes):
            value = np.frombuffer(value, f">u{width}").astype(f"<u{width}").tobytes()
        out[key] = value
    return out


def _fragments(ds: pydicom.Dataset) -> tuple[list[int], list[bytes]]:
    """(Basic Offset Table, fragments after it)."""
    return parse_basic_offsets(ds.PixelData), list(generate_fragments(ds.PixelData))[1:]


def _uses_rct(codestream: bytes) -> bool:
    """The multiple component transformation flag of the COD marker segment."""
    cod = codestream.index(b"\xff\x52")
    return codestream[cod + 8] == 1


def _assert_meta_group_length(data: bytes) -> None:
    """(0002,0000) comes first and counts exactly the meta elements that follow it."""
    assert data[128:132] == b"DICM" and data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    (length,) = struct.unpack_from("<I", data, 140)
    end = 144 + length
    assert data[end : end + 2] != b"\x02\x00"  # no meta element after the counted ones
    pos = 144
    while pos < end:  # and the counted ones end exactly there
        vr = data[pos + 4 : pos + 6]
        if vr in (b"OB", b"OW", b"UN", b"UT", b"SQ"):
            pos += 12 + struct.unpack_from("<I", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    assert pos == end


def _assert_container(received: bytes, packed: Packed, syntax=HTJ2KLossless) -> pydicom.Dataset:
    """A compressed outcome whose container is a valid DICOM file and restores exactly; returns it read."""
    assert packed.outcome == "compressed", packed.reason
    data = packed.data
    assert isinstance(data, bytes) and data != received
    assert container.is_container(data) and not container.is_container(received)
    assert restore(data) == received  # byte for byte
    assert packed.syntax_before == _read(received).file_meta.TransferSyntaxUID
    assert packed.syntax_after == syntax

    before, after = _read(received), _read(data)
    assert after.file_meta.TransferSyntaxUID == syntax
    assert after.SOPInstanceUID == before.SOPInstanceUID == packed.sop_uid
    assert after.file_meta.MediaStorageSOPInstanceUID == before.file_meta.MediaStorageSOPInstanceUID
    assert after.get("LossyImageCompression") == before.get("LossyImageCompression")
    rct = before.PhotometricInterpretation == "RGB"
    assert after.PhotometricInterpretation == ("YBR_RCT" if rct else before.PhotometricInterpretation)
    if after.SamplesPerPixel == 3:
        assert after.PlanarConfiguration == 0
    assert after[RESTORE_GROUP, 0x0010].value == "NEURONOVA RESTORE"  # the recipe's private creator

    element = after["PixelData"]
    assert element.VR == "OB" and element.is_undefined_length
    frames = int(after.get("NumberOfFrames") or 1)
    offsets, fragments = _fragments(after)
    assert len(fragments) == frames  # one fragment per frame
    assert offsets == list(np.cumsum([0] + [8 + len(f) for f in fragments[:-1]]))  # Basic Offset Table
    for fragment in fragments:
        assert fragment[:4] == b"\xff\x4f\xff\x51"  # raw codestream (SOC, SIZ), not JP2
        if syntax == HTJ2KLossless:
            assert b"\xff\x50" in fragment[:200]  # CAP marker: Part 15 (HT) codestream
        assert _uses_rct(fragment) == rct

    # the codestreams the viewers stream are exactly the fragments, undamaged by any padding
    codestream_syntax, codestreams = container.frame_codestreams(data)
    assert codestream_syntax == syntax
    assert [bytes(c) for c in codestreams] == [f[: len(c)] for c, f in zip(codestreams, fragments)]
    assert all(len(f) - len(c) in (0, 1) for c, f in zip(codestreams, fragments))
    assert container.read_recipe(data).size == len(received)

    _assert_meta_group_length(data)
    assert _flatten(after) == _flatten(before)
    assert np.array_equal(_independent_pixels(after), _original_pixels(before))
    return after


def _skipped(packed: Packed, reason: str, syntax: str | None = None) -> None:
    assert packed.outcome == "skipped", packed.reason
    assert packed.data is None
    assert reason in packed.reason
    assert packed.syntax_after == packed.syntax_before
    if syntax is not None:
        assert packed.syntax_before == syntax


def _failed(packed: Packed, reason: str = "") -> None:
    assert packed.outcome == "failed", packed.reason
    assert packed.data is None
    assert packed.reason and reason in packed.reason
    assert packed.syntax_after == packed.syntax_before


def test_independent_decoder_handles_htj2k_and_j2k():
    assert "pylibjpeg" in get_decoder(HTJ2KLossless).available_plugins
    assert "pylibjpeg" in get_decoder(JPEG2000Lossless).available_plugins


def test_backends_are_available_here():
    assert htj2k.is_available() and j2k.is_available()
    assert htj2k.TRANSFER_SYNTAX == HTJ2KLossless and j2k.TRANSFER_SYNTAX == JPEG2000Lossless


# ---------------------------------------------------------------------------
# Real files that must be packed

PACKABLE = [
    "CT_small.dcm",  # 16-bit signed, trailing (FFFC,FFFC) padding
    "MR_small.dcm",
    "693_UNCR.dcm",  # 512x512 CT, signed, BitsStored 14
    "MR2_UNCR.dcm",  # 1024x1024, BitsStored 12
    "US1_UNCR.dcm",  # real RGB ultrasound
    "SC_rgb.dcm",
    "SC_rgb_2frame.dcm",
    "SC_rgb_small_odd.dcm",  # 3x3
    "SC_rgb_16bit.dcm",
    "SC_rgb_16bit_2frame.dcm",
    "emri_small.dcm",  # 10 frames, 12-bit
    "eCT_Supplemental.dcm",  # 2 frames, 512x512
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian, signed
    "emri_small_big_endian.dcm",
    "SC_rgb_expb.dcm",
    "SC_rgb_expb_2frame.dcm",
    "SC_rgb_expb_16bit.dcm",
    "SC_rgb_expb_16bit_2frame.dcm",
    "ExplVR_BigEnd.dcm",  # PlanarConfiguration 1, big endian
    "color-pl.dcm",  # PlanarConfiguration 1
    "color-px.dcm",
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "MR_small_padded.dcm",  # pixel data longer than the frames
    "OBXXXX1A.dcm",  # PALETTE COLOR 8-bit
    "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb.dcm",  # big endian 8-bit in OW: swapped words
    "gdcm-US-ALOKA-16.dcm",  # PALETTE COLOR 16-bit, Implicit VR
    "gdcm-US-ALOKA-16_big.dcm",
    "vlut_04.dcm",  # 8-bit with a VOI LUT
    "SC_ybr_full_uncompressed.dcm",  # YBR_FULL kept as is (no RCT)
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # 12-bit, overlay in (6000,3000)
    "RG1_UNCR.dcm",  # MONOCHROME1, BitsStored 15, 1955x1841
    "RG3_UNCR.dcm",  # MONOCHROME1, BitsStored 10
]


@pytest.mark.parametrize("name", PACKABLE)
def test_real_files_pack_to_htj2k_and_restore_exactly(name):
    received = _file(name)
    packed = pack(received, DEFAULT)
    _assert_container(received, packed)
    assert packed.reason == ""
    assert len(packed.data) < len(received) or name == "SC_rgb_small_odd.dcm"  # 3x3: the recipe dominates


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "693_UNCR.dcm", "emri_small.dcm", "color-pl.dcm", "OBXXXX1A_expb.dcm",
             "MR_small_bigendian.dcm", "MR_small_implicit.dcm", "SC_rgb_16bit.dcm"]
)
def test_j2k_target(name):
    received = _file(name)
    after = _assert_container(received, pack(received, PackSettings(target="j2k")), JPEG2000Lossless)
    # OpenJPEG declares the real precision: SIZ Ssiz = (BitsStored - 1) | signed bit
    fragment = _fragments(after)[1][0]
    ssiz = fragment[fragment.find(b"\xff\x51") + 40]
    assert ssiz == (after.BitsStored - 1) | (0x80 if after.PixelRepresentation else 0)


def test_rgb_becomes_ybr_rct_and_decodes_to_the_original_rgb():
    received = _file("US1_UNCR.dcm")
    after = _read(pack(received, DEFAULT).data)
    assert after.PhotometricInterpretation == "YBR_RCT"
    rgb = _read(received).pixel_array  # RGB: no conversion
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for as_rgb in (False, True):
            assert np.array_equal(pixel_array(after, decoding_plugin="pylibjpeg", as_rgb=as_rgb), rgb)


@pytest.mark.parametrize("target, syntax", [("htj2k", HTJ2KLossless), ("j2k", JPEG2000Lossless)])
def test_8_stored_bits_in_16(target, syntax):
    ds = _read(_file("emri_small.dcm"))
    ds.PixelData = (ds.pixel_array & 0xFF).astype("<u2").tobytes()
    ds.BitsStored, ds.HighBit = 8, 7
    received = _write(ds)
    _assert_container(received, pack(received, PackSettings(target=target)), syntax)
    assert container.read_recipe(pack(received, DEFAULT).data).residuals == [None] * 10


def test_big_endian_palette_matches_its_little_endian_twin():
    """The big-endian LUT data (OW) must come out as the same values the LE twin holds."""
    big = _read(pack(_file("OBXXXX1A_expb.dcm"), DEFAULT).data)
    little = _read(pack(_file("OBXXXX1A.dcm"), DEFAULT).data)
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableData"
        assert big[keyword].value == little[keyword].value
    assert np.array_equal(big.pixel_array, little.pixel_array)


def test_fast_path_and_pydicom_path_give_the_same_codestreams():
    explicit = _file("693_UNCR.dcm")
    implicit = _write(_read(explicit), ImplicitVRLittleEndian)
    a, b = pack(explicit, DEFAULT), pack(implicit, DEFAULT)
    assert [bytes(c) for c in container.frame_codestreams(a.data)[1]] == \
        [bytes(c) for c in container.frame_codestreams(b.data)[1]]
    assert restore(b.data) == implicit


def test_fast_path_keeps_the_dataset_bytes_and_restores_trailing_padding():
    received = _file("CT_small.dcm")
    assert b"\xfc\xff\xfc\xff" in received[-200:]
    data = pack(received, DEFAULT).data
    meta_end = 144 + struct.unpack_from("<I", received, 140)[0]
    pixel_start = received.rfind(b"\xe0\x7f\x10\x00OW")
    new_meta_end = 144 + struct.unpack_from("<I", data, 140)[0]
    dataset = received[meta_end:pixel_start]
    assert data[new_meta_end : new_meta_end + len(dataset)] == dataset
    assert data[new_meta_end + len(dataset) :].startswith(PIXEL_DATA_HEADER)
    after = _read(data)
    assert "DataSetTrailingPadding" not in after
    assert list(after.keys())[-2:] == [(RESTORE_GROUP << 16) | 0x0010, (RESTORE_GROUP << 16) | 0x1010]
    assert restore(data).endswith(received[-100:])  # the padding comes back


@pytest.mark.parametrize("name", ["CT_small.dcm", "emri_small.dcm", "color-pl.dcm", "SC_rgb.dcm"])
def test_explicit_little_endian_uses_the_fast_path(name, monkeypatch):
    monkeypatch.setattr(layout, "_read_with_pydicom", lambda data: pytest.fail("slow path used"))
    assert pack(_file(name), DEFAULT).outcome == "compressed"


def test_multi_frame_output_does_not_depend_on_thread_count():
    received = _file("emri_small.dcm")
    one, two, four = (pack(received, PackSettings(frame_threads=n)) for n in (1, 2, 4))
    assert one.data == two.data == four.data


@pytest.mark.parametrize("undefined_length", [True, False])
def test_top_level_pixel_data_found_after_icon_image_sequence(undefined_length):
    """An Icon Image Sequence holds its own (7FE0,0010); only the top-level one is packed."""
    ds = _read(_file("CT_small.dcm"))
    icon = pydicom.Dataset()
    icon.Rows, icon.Columns, icon.SamplesPerPixel = 4, 4, 1
    icon.PhotometricInterpretation = "MONOCHROME2"
    icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
    icon.PixelData = bytes(range(16))
    ds.IconImageSequence = [icon]
    ds["IconImageSequence"].is_undefined_length = undefined_length
    received = _write(ds)
    after = _assert_container(received, pack(received, DEFAULT))
    assert after.IconImageSequence[0].PixelData == bytes(range(16))


def test_odd_sized_8_bit_frame_with_padding_byte():
    ds = _read(_file("OBXXXX1A.dcm"))
    arr = ds.pixel_array[:5, :7].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes() + b"\x00"  # 35 bytes, padded to even
    received = _write(ds)
    _assert_container(received, pack(received, DEFAULT))


def test_odd_padding_byte_that_is_not_zero_comes_back():
    ds = _read(_file("OBXXXX1A.dcm"))
    arr = ds.pixel_array[:5, :7].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes() + b"\x7f"
    received = _write(ds)
    _assert_container(received, pack(received, DEFAULT))


def test_stale_group_lengths_are_dropped_when_photometric_changes():
    """A retired (0028,0000) would be wrong once RGB becomes YBR_RCT: the container drops it."""
    received = _file("SC_rgb.dcm")
    first = received.index(b"\x28\x00\x02\x00US")  # SamplesPerPixel opens group 0028 here
    pixels = received.index(b"\xe0\x7f\x10\x00OB")  # and Pixel Data directly follows the group
    group_length = b"\x28\x00\x00\x00UL\x04\x00" + struct.pack("<I", pixels - first)
    with_length = received[:first] + group_length + received[first:]
    packed = pack(with_length, DEFAULT)
    after = _assert_container(with_length, packed)
    assert after.PhotometricInterpretation == "YBR_RCT"
    assert b"\x28\x00\x00\x00UL" not in packed.data


def _insert_before_patient_name(data: bytes, raw: bytes) -> bytes:
    position = data.index(b"\x10\x00\x10\x00PN")
    return data[:position] + raw + data[position:]


def test_undefined_length_un_element_goes_through_pydicom(monkeypatch):
    """UN of undefined length holds Implicit VR items the byte walker does not parse."""
    item = b"\x10\x00\x20\x00\x04\x00\x00\x00ABCD"
    private = (
        b"\x09\x00\x10\x00LO\x04\x00ACME"
        + b"\x09\x00\x01\x10UN\x00\x00\xff\xff\xff\xff"
        + b"\xfe\xff\x00\xe0\xff\xff\xff\xff" + item + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00"
        + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    )
    received = _insert_before_patient_name(_file("CT_small.dcm"), private)
    slow = []
    real = layout._read_with_pydicom
    monkeypatch.setattr(layout, "_read_with_pydicom", lambda data: slow.append(1) or real(data))
    after = _assert_container(received, pack(received, DEFAULT))
    assert slow == [1]
    assert after[0x00091001].value[0].PatientID == "ABCD"


def test_defined_and_undefined_length_sequences_stay_on_the_fast_path(monkeypatch):
    ds = _read(_file("CT_small.dcm"))
    inner = pydicom.Dataset()
    inner.CodeValue, inner.CodingSchemeDesignator, inner.CodeMeaning = "T-A0100", "SRT", "Brain"
    outer = pydicom.Dataset()
    outer.AnatomicRegionSequence = [inner]
    ds.ReferencedImageSequence = [outer, pydicom.Dataset()]
    ds["ReferencedImageSequence"].is_undefined_length = False
    received = _write(ds)
    monkeypatch.setattr(layout, "_read_with_pydicom", lambda data: pytest.fail("slow path used"))
    after = _assert_container(received, pack(received, DEFAULT))
    assert after.ReferencedImageSequence[0].AnatomicRegionSequence[0].CodeMeaning == "Brain"


def test_meta_saying_explicit_for_an_implicit_dataset():
    """The walker sees no VR and hands the file to pydicom, which detects the real encoding."""
    implicit = _file("MR_small_implicit.dcm")
    explicit = _file("MR_small.dcm")

    def meta_end(data):
        return 144 + struct.unpack_from("<I", data, 140)[0]

    mislabelled = explicit[: meta_end(explicit)] + implicit[meta_end(implicit) :]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = pack(mislabelled, DEFAULT)
        assert packed.outcome == "compressed", packed.reason
        assert restore(packed.data) == mislabelled
        assert np.array_equal(_read(packed.data).pixel_array, _read(implicit).pixel_array)


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "SC_rgb_16bit.dcm", "color-px.dcm"])
def test_rct_pays_off_on_real_rgb(name):
    """Why RGB becomes YBR_RCT: the colour transform shrinks real RGB images markedly."""
    frame = _read(_file(name)).pixel_array
    bits = frame.dtype.itemsize * 8
    assert len(htj2k.encode(frame, bits, True)) < 0.95 * len(htj2k.encode(frame, bits, False))


# ---------------------------------------------------------------------------
# Values above Bits Stored: the codestream holds the stored values, a residual gives the rest back


def _with_high_bits(name: str, stored: int, signed: bool, syntax=None, junk=True) -> tuple[bytes, np.ndarray]:
    """A 16-bit copy of `name` declaring `stored` bits whose unused high bits are random (or the
    file's own values left as they are); returns (file, the stored values)."""
    ds = _read(_file(name))
    assert ds.BitsAllocated == 16
    words = ds.pixel_array.astype(np.int64) & 0xFFFF
    if junk:
        rng = np.random.default_rng(1)
        words = (words & ((1 << stored) - 1)) | (rng.integers(0, 1 << (16 - stored), words.shape) << stored)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = stored, stored - 1, int(signed)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    dtype = ">u2" if syntax == ExplicitVRBigEndian else "<u2"
    ds.PixelData = words.astype(dtype).tobytes()  # pydicom writes the PixelData bytes as given
    values = _stored_values(words.astype(np.int16 if signed else np.uint16), ds)
    return _write(ds, syntax), values


@pytest.mark.parametrize("target, syntax", [("htj2k", HTJ2KLossless), ("j2k", JPEG2000Lossless)])
@pytest.mark.parametrize("source", [None, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("signed", [False, True])
def test_junk_in_unused_high_bits_is_packed_with_a_residual(signed, source, target, syntax):
    received, values = _with_high_bits("CT_small.dcm", 12, signed, source)
    packed = pack(received, PackSettings(target=target))
    after = _assert_container(received, packed, syntax)
    assert np.array_equal(_independent_pixels(after), values)
    # the junk is out of the codestream, not only out of the decoded view
    backend = htj2k if target == "htj2k" else j2k
    assert np.array_equal(backend.decode(_fragments(after)[1][0]), values)
    assert container.read_recipe(packed.data).residuals[0] is not None


@pytest.mark.parametrize("name, stored, signed", [
    ("CT_small.dcm", 11, False),  # values up to 2191: bit 11 used
    ("CT_small.dcm", 11, True),  # 2048..2191 have bit 11 set but sign bits 12-15 clear
    ("MR_small.dcm", 12, True),  # up to 2145: sign bits that do not match bit 11
    ("693_UNCR.dcm", 12, True),  # -2000..2492
    ("693_UNCR.dcm", 10, False),  # signed values read as unsigned: negative ones fill bits 10-15
    ("RG1_UNCR.dcm", 12, False),  # MONOCHROME1 up to 26479, 1955x1841
    ("emri_small.dcm", 8, False),  # multi-frame: one residual per frame
])
def test_values_above_bits_stored_left_as_they_were(name, stored, signed):
    received, values = _with_high_bits(name, stored, signed, junk=False)
    packed = pack(received, DEFAULT)
    after = _assert_container(received, packed)
    assert np.array_equal(_independent_pixels(after), values)
    residuals = container.read_recipe(packed.data).residuals
    assert len(residuals) == int(after.get("NumberOfFrames") or 1)
    assert any(residual is not None for residual in residuals)


def _with_embedded_overlay(syntax=None) -> bytes:
    """emri_small (BitsStored 12 in 16) with an overlay plane in bit 12 of every frame."""
    ds = _read(_file("emri_small.dcm"))
    ds.add_new(0x60000010, "US", ds.Rows)
    ds.add_new(0x60000011, "US", ds.Columns)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 12)
    frames = ds.pixel_array.copy()
    frames[:, 10:30, 20:40] |= 1 << 12
    ds.PixelData = frames.astype("<u2").tobytes()
    return _write(ds, syntax)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_overlay_in_unused_pixel_bits_is_packed_and_restored(syntax):
    received = _with_embedded_overlay(syntax)
    packed = pack(received, DEFAULT)
    after = _assert_container(received, packed)
    assert np.array_equal(_independent_pixels(after), _read(_file("emri_small.dcm")).pixel_array)
    assert all(r is not None for r in container.read_recipe(packed.data).residuals)
    words = np.frombuffer(_read(restore(packed.data)).PixelData, "<u2").reshape(10, 64, 64)
    assert (words[:, 10:30, 20:40] >> 12 & 1).all()  # the overlay plane is back (pixel_array masks it)


def test_clean_high_bits_give_the_same_codestreams_as_junk():
    junky, values = _with_high_bits("CT_small.dcm", 12, False)
    clean = _read(junky)
    clean.PixelData = values.astype("<u2").tobytes()
    clean = _write(clean)
    a, b = pack(junky, DEFAULT), pack(clean, DEFAULT)
    assert bytes(container.frame_codestreams(a.data)[1][0]) == bytes(container.frame_codestreams(b.data)[1][0])
    assert container.read_recipe(b.data).residuals == [None]
    assert len(b.data) < len(a.data)  # the junk costs its residual


def test_pixels_not_in_the_low_bits_are_stored_as_received():
    """HighBit 15 with BitsStored 12 puts the values in the top bits: stored as received."""
    ds = _read(_file("emri_small.dcm"))
    ds.HighBit = 15
    _skipped(pack(_write(ds), DEFAULT), "HighBit 15 is not BitsStored - 1 (11)")


@pytest.mark.parametrize("source", [None, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_trailing_padding_comes_back_on_every_syntax(source):
    ds = _read(_file("CT_small.dcm"))
    if source == ExplicitVRBigEndian:
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
    received = _write(ds, source)
    assert b"\xfc\xff\xfc\xff" in received[-200:] or b"\xff\xfc\xff\xfc" in received[-200:]
    _assert_container(received, pack(received, DEFAULT))


def test_elements_after_pixel_data_are_kept_in_the_container():
    ct = _file("CT_small.dcm")
    padding = ct.rfind(b"\xfc\xff\xfc\xff")
    private = b"\xe1\x7f\x10\x00LO\x04\x00ACME" + b"\xe1\x7f\x00\x10OB\x00\x00\x04\x00\x00\x00abcd"
    received = ct[:padding] + private + ct[padding:]
    after = _assert_container(received, pack(received, DEFAULT))
    assert after[0x7FE11000].value == b"abcd"


def test_digital_signatures_after_pixel_data_are_stored_as_received():
    ct = _file("CT_small.dcm")
    received = ct[: ct.rfind(b"\xfc\xff\xfc\xff")] + b"\xfa\xff\xfa\xffSQ\x00\x00\x00\x00\x00\x00"
    _skipped(pack(received, DEFAULT), "elements after Pixel Data that the container cannot follow")


# ---------------------------------------------------------------------------
# What is stored reads back as what was received (the storage area's read: restore a container,
# hand back anything else as it is)


def _stored(received: bytes, settings: PackSettings = DEFAULT) -> bytes:
    packed = pack(received, settings)
    return packed.data if packed.data is not None else received


def _read_back(stored: bytes) -> bytes:
    return restore(stored) if container.is_container(stored) else stored


def _ending_with_the_footer_magic() -> bytes:
    """A plain DICOM file whose last 12 bytes happen to be the container footer's magic."""
    ds = _read(_file("CT_small.dcm"))
    ds.DataSetTrailingPadding = b"\x00" * 4 + b"NNRESTORE1\x00\x00"
    return _write(ds)


@pytest.mark.parametrize("name", ["CT_small.dcm", "JPEG2000.dcm", "rtplan.dcm", "emri_small.dcm"])
@pytest.mark.parametrize("target", ["htj2k", "none"])
def test_stored_reads_back_as_received(name, target):
    received = _file(name)
    assert _read_back(_stored(received, PackSettings(target=target))) == received


def test_plain_file_ending_with_the_magic_reads_back_when_packed():
    received = _ending_with_the_footer_magic()
    assert _read_back(_stored(received)) == received


def test_plain_file_ending_with_the_magic_reads_back_when_stored_as_received():
    received = _ending_with_the_footer_magic()
    assert _read_back(_stored(received, PackSettings(target="none"))) == received


def test_a_received_container_reads_back_as_received():
    received = pack(_file("CT_small.dcm"), DEFAULT).data  # e.g. a file copied out of the storage area
    assert _read_back(_stored(received)) == received


# ---------------------------------------------------------------------------
# Stored as received


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(
    "name",
    [
        "JPEG2000.dcm",
        "JPEG-lossy.dcm",
        "SC_rgb_jpeg.dcm",
        "SC_rgb_rle.dcm",
        "emri_small_jpeg_ls_lossless.dcm",
        "MR_small_jp2klossless.dcm",
        "SC_rgb_jpeg_gdcm.dcm",
    ],
)
def test_already_compressed_is_stored_as_received(name):
    received = _file(name)
    syntax = _read(received).file_meta.TransferSyntaxUID
    _skipped(pack(received, DEFAULT), f"already compressed ({syntax})", syntax)


def test_deflated_is_stored_as_received():
    _skipped(pack(_file("image_dfl.dcm"), DEFAULT), "deflated", "1.2.840.10008.1.2.1.99")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("reportsi.dcm", "no pixel data"),
        ("test-SR.dcm", "no pixel data"),
        ("rtplan.dcm", "no pixel data"),
        ("waveform_ecg.dcm", "no pixel data"),
        ("rtdose.dcm", "BitsAllocated 32 is not supported"),
        ("SC_rgb_32bit.dcm", "BitsAllocated 32 is not supported"),
        ("liver.dcm", "BitsAllocated 1 is not supported"),
        ("SC_ybr_full_422_uncompressed.dcm", "photometric interpretation YBR_FULL_422"),
        ("SC_rgb_small_odd_big_endian.dcm", "8-bit big-endian OW pixel data with an odd frame size"),
    ],
)
def test_not_packable_is_stored_as_received(name, reason):
    received = _file(name)
    packed = pack(received, DEFAULT)
    _skipped(packed, reason, _read(received).file_meta.TransferSyntaxUID)
    assert packed.sop_uid == _read(received).SOPInstanceUID


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_float_pixel_data_is_stored_as_received(syntax):
    ds = _read(_file("MR_small.dcm"))
    floats = ds.pixel_array.astype(np.float32)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = floats.tobytes()
    _skipped(pack(_write(ds, syntax), DEFAULT), "float pixel data")


def test_syntax_not_configured_is_stored_as_received():
    settings = PackSettings(syntaxes=frozenset({ExplicitVRLittleEndian}))
    _skipped(pack(_file("MR_small_implicit.dcm"), settings), f"transfer syntax {ImplicitVRLittleEndian} not packed")


def test_target_none_is_stored_as_received():
    received = _file("CT_small.dcm")
    packed = pack(received, PackSettings(target="none"))
    _skipped(packed, "Target is none", ExplicitVRLittleEndian)
    assert packed.sop_uid == _read(received).SOPInstanceUID


def test_min_pixel_bytes():
    received = _file("CT_small.dcm")  # 32768 bytes of pixels
    _skipped(pack(received, PackSettings(min_pixel_bytes=32769)),
             "pixel data (32768 bytes) below MinPixelBytes (32769)")
    _assert_container(received, pack(received, PackSettings(min_pixel_bytes=32768)))


def test_max_object_bytes():
    received = _file("CT_small.dcm")
    size = len(received)
    _skipped(pack(received, PackSettings(max_object_bytes=size - 1)), f"file of {size} bytes above MaxObjectSizeMB")
    _assert_container(received, pack(received, PackSettings(max_object_bytes=size)))


# ---------------------------------------------------------------------------
# Failures, fallback and verification


def test_truncated_pixel_data_is_a_failure():
    packed = pack(_file("MR_truncated.dcm"), DEFAULT)
    _failed(packed, "pixel data is truncated")
    assert packed.syntax_before == ExplicitVRLittleEndian


def test_htj2k_encoder_exception_falls_back_to_j2k(monkeypatch, caplog):
    def broken(frame, *args):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(container.htj2k, "encode", broken)
    received = _file("CT_small.dcm")
    with caplog.at_level(logging.WARNING, logger="neuronova.storage"):
        packed = pack(received, DEFAULT)
    _assert_container(received, packed, JPEG2000Lossless)
    assert packed.reason == "htj2k: RuntimeError: encoder exploded"
    assert packed.sop_uid in caplog.text and "j2k" in caplog.text


def test_both_encoders_broken_fails(monkeypatch, caplog):
    def broken(frame, *args):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(container.htj2k, "encode", broken)
    monkeypatch.setattr(container.j2k, "encode", broken)
    ds = _read(_file("emri_small.dcm"))
    ds.PatientName = "Hong^Gildong"
    with caplog.at_level(logging.WARNING, logger="neuronova.storage"):
        packed = pack(_write(ds), DEFAULT)
    _failed(packed, "htj2k: RuntimeError: encoder exploded; j2k: RuntimeError: encoder exploded")
    assert ds.SOPInstanceUID in caplog.text
    assert "Hong" not in caplog.text  # no patient data in the log


def test_broken_htj2k_without_fallback_fails(monkeypatch):
    monkeypatch.setattr(container.htj2k, "encode", lambda frame, *args: b"\xff\x4f\xff\x51garbage")
    _failed(pack(_file("CT_small.dcm"), PackSettings(fallback_to_j2k=False)), "htj2k: ")


def test_truncated_htj2k_codestream_falls_back_to_j2k(monkeypatch):
    real = htj2k.encode
    monkeypatch.setattr(container.htj2k, "encode", lambda frame, *args: real(frame, *args)[:-200])
    received = _file("MR_small.dcm")
    packed = pack(received, DEFAULT)
    _assert_container(received, packed, JPEG2000Lossless)
    assert packed.reason.startswith("htj2k: ")


def _lossy(real, frame_index: int | None = None):
    """An encoder that encodes a slightly different frame (all frames, or only the frame_index-th call)."""
    calls = []

    def encode(frame, *args):
        calls.append(1)
        if frame_index is None or len(calls) == frame_index:
            frame = frame.copy()
            frame.flat[frame.size // 2] ^= 1
        return real(frame, *args)

    return encode


@pytest.mark.parametrize("name, frame_index", [("CT_small.dcm", None), ("SC_rgb.dcm", None),
                                               ("emri_small.dcm", 3), ("MR_small_bigendian.dcm", None)])
def test_lossy_htj2k_encoder_is_caught_by_verification(monkeypatch, name, frame_index):
    monkeypatch.setattr(container.htj2k, "encode", _lossy(htj2k.encode, frame_index))
    received = _file(name)
    packed = pack(received, PackSettings(frame_threads=1))
    _assert_container(received, packed, JPEG2000Lossless)
    assert packed.reason.startswith("htj2k: verification mismatch at byte ")


def test_lossy_encoder_on_a_residual_frame_is_caught(monkeypatch):
    monkeypatch.setattr(container.htj2k, "encode", _lossy(htj2k.encode))
    received, _ = _with_high_bits("CT_small.dcm", 12, True)
    packed = pack(received, DEFAULT)
    _assert_container(received, packed, JPEG2000Lossless)
    assert "htj2k: verification mismatch" in packed.reason


def test_lossy_encoders_without_a_good_one_fail(monkeypatch):
    monkeypatch.setattr(container.htj2k, "encode", _lossy(htj2k.encode))
    received = _file("CT_small.dcm")
    _failed(pack(received, PackSettings(fallback_to_j2k=False)), "htj2k: verification mismatch at byte")
    monkeypatch.setattr(container.j2k, "encode", _lossy(j2k.encode))
    _failed(pack(received, DEFAULT), "j2k: verification mismatch at byte")
    _failed(pack(received, PackSettings(target="j2k")), "j2k: verification mismatch at byte")


def _corrupt_decode(real, call: int):
    """A decode that flips one pixel on its `call`-th invocation."""
    calls = []

    def decode(codestream):
        calls.append(1)
        decoded = real(codestream)
        if len(calls) == call:
            decoded = decoded.copy()
            decoded.flat[0] ^= 1
        return decoded

    return decode, calls


def test_verification_always_decodes_every_frame(monkeypatch):
    decode, calls = _corrupt_decode(htj2k.decode, 0)
    monkeypatch.setattr(container.htj2k, "decode", decode)
    _assert_container(_file("emri_small.dcm"), pack(_file("emri_small.dcm"), DEFAULT))
    assert len(calls) >= 10


def test_verification_mismatch_in_a_later_frame_falls_back(monkeypatch):
    decode, _ = _corrupt_decode(htj2k.decode, 3)
    monkeypatch.setattr(container.htj2k, "decode", decode)
    received = _file("emri_small.dcm")
    packed = pack(received, PackSettings(frame_threads=1))
    assert packed.outcome == "compressed" and packed.syntax_after == JPEG2000Lossless
    assert restore(packed.data) == received
    assert packed.reason.startswith("htj2k: verification mismatch at byte ")


def test_missing_imagecodecs_is_named_and_j2k_is_tried(monkeypatch):
    monkeypatch.setattr(htj2k, "imagecodecs", None)
    assert not htj2k.is_available()
    assert "imagecodecs" in htj2k.missing()
    with pytest.raises(CodecUnavailable, match="imagecodecs"):
        htj2k.encode(np.zeros((2, 2), np.uint8))
    received = _file("MR_small.dcm")
    packed = pack(received, DEFAULT)
    assert packed.outcome == "compressed" and packed.syntax_after == JPEG2000Lossless
    assert restore(packed.data) == received
    assert "htj2k: CodecUnavailable" in packed.reason
    monkeypatch.setattr(j2k, "imagecodecs", None)
    _failed(pack(received, DEFAULT), "JPEG 2000 needs the Python package 'imagecodecs'")


# ---------------------------------------------------------------------------
# Garbage never escapes as an exception


def _garbage() -> list:
    ct = _file("CT_small.dcm")
    header_only = ct[: ct.rfind(b"\xe0\x7f\x10\x00OW") + 6]
    return [
        b"",
        b"not dicom",
        b"\x00" * 128 + b"DICM",
        b"\x00" * 128 + b"DICM" + b"\xff" * 64,
        ct[:100],
        ct[:400],  # cut inside the dataset header
        ct[:-10000],  # cut inside the pixel data
        header_only,
        _file("MR_truncated.dcm"),
        bytearray(ct[:1000]),
        None,
    ]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("data", _garbage(), ids=lambda d: f"{type(d).__name__}-{len(d) if d is not None else 0}")
def test_garbage_never_raises(data):
    packed = pack(data, DEFAULT)
    assert packed.outcome in ("failed", "skipped")
    assert packed.data is None and packed.reason
    assert data is None or not container.is_container(data)  # read back as it was stored


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the damaged values
def test_random_header_corruption_never_raises_and_never_gives_a_bad_container():
    rng = np.random.default_rng(7)
    original = _file("CT_small.dcm")
    compressed = 0
    for _ in range(50):
        damaged = bytearray(original)
        for position in rng.integers(132, 1500, 4):
            damaged[position] = int(rng.integers(0, 256))
        data = bytes(damaged)
        packed = pack(data, DEFAULT)
        assert packed.outcome in ("compressed", "skipped", "failed")
        if packed.outcome == "compressed":
            compressed += 1
            assert restore(packed.data) == data
        else:
            assert packed.data is None
    assert compressed  # some damage leaves a packable file


def test_package_does_not_import_orthanc():
    assert "orthanc" not in sys.modules
    assert container.log.name == "neuronova.storage"


# ---------------------------------------------------------------------------
# Reading a container


@pytest.mark.parametrize("name", ["CT_small.dcm", "rtplan.dcm", "JPEG2000.dcm", "image_dfl.dcm", "SC_rgb.dcm"])
def test_plain_files_are_not_containers(name):
    received = _file(name)
    assert not container.is_container(received)
    with pytest.raises(ContainerError, match="not a NeuroNova container"):
        restore(received)
    with pytest.raises(ContainerError):
        container.frame_codestreams(received)


def test_is_container_accepts_bytes_like():
    data = pack(_file("CT_small.dcm"), DEFAULT).data
    assert container.is_container(data) and container.is_container(memoryview(data))
    assert container.is_container(bytearray(data))
    assert not container.is_container(b"") and not container.is_container(data[:-1])


def test_restore_accepts_a_memoryview():
    received = _file("emri_small.dcm")
    data = pack(received, DEFAULT).data
    assert restore(memoryview(data)) == received == b"".join(container.restore_chunks(data))


def test_read_recipe_describes_the_frames():
    received = _file("emri_small.dcm")
    data = pack(received, DEFAULT).data
    recipe = container.read_recipe(data)
    assert recipe.size == len(received) and recipe.syntax == HTJ2KLossless
    assert len(recipe.fragments) == 10 and recipe.residuals == [None] * 10
    for (offset, length), codestream in zip(recipe.fragments, container.frame_codestreams(data)[1]):
        assert bytes(codestream) == data[offset : offset + length]


def _container_and_first_fragment(name="CT_small.dcm") -> tuple[bytes, bytes, int, int]:
    received = _file(name)
    data = pack(received, DEFAULT).data
    offset, length = container.read_recipe(data).fragments[0]
    return received, data, offset, length


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # imagecodecs' callback
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_flipped_byte_inside_a_codestream_is_a_container_error(where):
    """A decoder error or the CRC-32 of the received file: never wrong bytes read back."""
    _, data, offset, length = _container_and_first_fragment()
    damaged = bytearray(data)
    damaged[offset + int(length * where)] ^= 0xFF
    with pytest.raises(ContainerError):
        restore(bytes(damaged))


def test_damaged_codestream_header_raises_container_error():
    received, data, offset, _ = _container_and_first_fragment()
    damaged = bytearray(data)
    damaged[offset + 2] ^= 0xFF  # inside the SIZ marker segment
    with pytest.raises(ContainerError):
        restore(bytes(damaged))


@pytest.mark.parametrize("cut", [1, 16, 100, 5000])
def test_truncated_container_raises_container_error(cut):
    _, data, _, _ = _container_and_first_fragment()
    assert not container.is_container(data[:-cut])
    with pytest.raises(ContainerError, match="not a NeuroNova container"):
        restore(data[:-cut])


@pytest.mark.parametrize("back", [5, 40, 200])
def test_damaged_recipe_raises_container_error(back):
    _, data, _, _ = _container_and_first_fragment()
    damaged = bytearray(data)
    damaged[len(data) - 16 - back] ^= 0xFF
    with pytest.raises(ContainerError):
        restore(bytes(damaged))


def test_damaged_footer_length_raises_container_error():
    _, data, _, _ = _container_and_first_fragment()
    damaged = bytearray(data)
    damaged[-16:-12] = struct.pack("<I", len(data) * 2)
    with pytest.raises(ContainerError):
        restore(bytes(damaged))


# ---------------------------------------------------------------------------
# Multi-frame memory sanity


@pytest.fixture(scope="module")
def fifty_frames() -> tuple[bytes, np.ndarray]:
    ds = _read(_file("CT_small.dcm"))
    rng = np.random.default_rng(0)
    ramp = np.add.outer(np.arange(256), np.arange(256))[None] * 4
    frames = (ramp + np.arange(50)[:, None, None] * 7 + rng.integers(0, 64, (50, 256, 256))).astype("<u2")
    ds.Rows = ds.Columns = 256
    ds.NumberOfFrames = 50
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = frames.tobytes()
    return _write(ds), frames


def test_fifty_frames_pack_and_restore_within_a_few_copies_of_the_file(fifty_frames):
    received, frames = fifty_frames
    tracemalloc.start()
    try:
        packed = pack(received, DEFAULT)
        pack_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        restored = restore(packed.data)
        restore_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert packed.outcome == "compressed", packed.reason
    assert restored == received
    assert pack_peak < 3 * len(received), pack_peak
    assert restore_peak < 2.5 * len(received), restore_peak


def test_fifty_frames_codestreams_decode_to_each_frame(fifty_frames):
    received, frames = fifty_frames
    packed = pack(received, DEFAULT)
    after = _assert_container(received, packed)
    syntax, codestreams = container.frame_codestreams(packed.data)
    assert syntax == HTJ2KLossless and len(codestreams) == 50
    for frame, codestream in zip(frames, codestreams):
        assert np.array_equal(imagecodecs.htj2k_decode(bytes(codestream)), frame)
    assert np.array_equal(_independent_pixels(after), frames)


@pytest.mark.parametrize("name, keyword, value, reason", [
    ("CT_small.dcm", "PixelRepresentation", 2, "PixelRepresentation 2 is neither 0 nor 1"),
    ("SC_rgb.dcm", "PlanarConfiguration", 2, "PlanarConfiguration 2 is neither 0 nor 1"),
])
def test_invalid_pixel_description_values_are_stored_as_received(name, keyword, value, reason):
    """Transcoding such a header as if it said 0 would guess at what its pixels mean."""
    ds = _read(_file(name))
    setattr(ds, keyword, value)
    _skipped(pack(_write(ds), DEFAULT), reason)
