"""Transcoder tests on real DICOM files from pydicom and pydicom-data.

Pixels of every transcoded file are decoded by an independent decoder (pydicom
with pylibjpeg-openjpeg, not the imagecodecs backends that encoded them) and
compared with the original's pixels.
"""

from __future__ import annotations

import logging
import struct
import warnings
from io import BytesIO

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

from neuronova import transcoder
from neuronova.codec import CodecUnavailable, htj2k, j2k
from neuronova.transcoder import TranscodeResult, TranscodeSettings, transcode

DEFAULT = TranscodeSettings()
PIXEL_DATA_HEADER = b"\xe0\x7f\x10\x00OB\x00\x00\xff\xff\xff\xff"


def _file(name: str) -> bytes:
    with open(get_testdata_file(name), "rb") as handle:
        return handle.read()


def _read(data: bytes) -> pydicom.FileDataset:
    return pydicom.dcmread(BytesIO(data))


def _write(ds: pydicom.Dataset, syntax=None) -> bytes:
    if syntax is not None:
        ds.file_meta.TransferSyntaxUID = syntax
    out = BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def _pixels(ds: pydicom.Dataset) -> np.ndarray:
    """Stored values (no colour conversion), as the standard defines them: only BitsStored bits count."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom warns about odd test files
        arr = pixel_array(ds, as_rgb=False)
    stored, allocated = ds.BitsStored, ds.BitsAllocated
    if stored < allocated:
        if ds.PixelRepresentation:
            shift = 64 - stored
            arr = ((arr.astype(np.int64) << shift) >> shift).astype(arr.dtype)
        else:
            arr = arr & ((1 << stored) - 1)
    return arr.astype(arr.dtype.newbyteorder("="))


def _flatten(ds: pydicom.Dataset, path=()) -> dict:
    """Every element except those the transcoder has to change, keyed by its path, values normalised to LE."""
    big_endian = ds.original_encoding[1] is False
    out = {}
    for element in ds:
        key = path + (int(element.tag),)
        if element.tag in (0x7FE00010, 0x00280004, 0x00280006, 0xFFFCFFFC) or (element.tag.element == 0 and element.tag.group > 2):
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


def _assert_transcoded(original: bytes, result: TranscodeResult, syntax=HTJ2KLossless) -> pydicom.Dataset:
    assert result.outcome == "transcoded", result.reason
    assert result.changed and result.data is not original
    assert result.syntax_after == syntax
    assert result.bytes_before == len(original) and result.bytes_after == len(result.data)

    before, after = _read(original), _read(result.data)
    assert after.file_meta.TransferSyntaxUID == syntax
    assert after.SOPInstanceUID == before.SOPInstanceUID == result.sop_instance_uid
    assert after.file_meta.MediaStorageSOPInstanceUID == before.file_meta.MediaStorageSOPInstanceUID
    # never set by us; kept when the source says it was lossy compressed before
    assert after.get("LossyImageCompression") == before.get("LossyImageCompression")
    assert "LossyImageCompressionRatio" not in after or "LossyImageCompressionRatio" in before
    rct = before.PhotometricInterpretation == "RGB"
    assert after.PhotometricInterpretation == ("YBR_RCT" if rct else before.PhotometricInterpretation)
    if after.SamplesPerPixel == 3:
        assert after.PlanarConfiguration == 0

    element = after["PixelData"]
    assert element.VR == "OB" and element.is_undefined_length
    frames = int(after.get("NumberOfFrames") or 1)
    offsets, fragments = _fragments(after)
    assert len(fragments) == frames  # one fragment per frame
    assert offsets == list(np.cumsum([0] + [8 + len(f) for f in fragments[:-1]]))
    for fragment in fragments:
        assert fragment[:4] == b"\xff\x4f\xff\x51"  # raw codestream (SOC, SIZ), not JP2
        if syntax == HTJ2KLossless:
            assert b"\xff\x50" in fragment[:200]  # CAP marker: Part 15 (HT) codestream
        assert _uses_rct(fragment) == rct

    _assert_meta_group_length(result.data)
    assert _flatten(after) == _flatten(before)
    assert np.array_equal(_pixels(after), _pixels(before))
    return after


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


def _skipped(original: bytes, result: TranscodeResult, reason: str) -> None:
    assert result.outcome == "skipped", result.reason
    assert reason in result.reason
    assert result.data is original and not result.changed
    assert result.bytes_after == result.bytes_before == len(original)
    assert result.syntax_after == result.syntax_before


def _failed(original, result: TranscodeResult, reason: str = "") -> None:
    assert result.outcome == "failed"
    assert reason in result.reason and result.reason
    assert result.data is original and not result.changed


def test_independent_decoder_handles_htj2k():
    assert "pylibjpeg" in get_decoder(HTJ2KLossless).available_plugins


# ---------------------------------------------------------------------------
# Real files that must transcode losslessly

TRANSCODABLE = [
    "CT_small.dcm",  # 16-bit signed, trailing (FFFC,FFFC) padding
    "693_UNCR.dcm",  # 512x512 CT, signed, BitsStored 14
    "MR_small.dcm",
    "MR_small_bigendian.dcm",  # Explicit VR Big Endian, signed
    "MR_small_implicit.dcm",  # Implicit VR Little Endian
    "MR-SIEMENS-DICOM-WithOverlays.dcm",  # 12-bit, overlay in (6000,3000): not embedded
    "emri_small.dcm",  # 10 frames, 12-bit
    "emri_small_big_endian.dcm",
    "SC_rgb.dcm",
    "SC_rgb_16bit.dcm",
    "SC_rgb_2frame.dcm",
    "SC_rgb_expb_16bit_2frame.dcm",
    "SC_rgb_small_odd.dcm",  # 3x3
    "SC_rgb_small_odd_big_endian.dcm",
    "color-pl.dcm",  # PlanarConfiguration 1
    "ExplVR_BigEnd.dcm",  # PlanarConfiguration 1, big endian
    "SC_ybr_full_uncompressed.dcm",
    "OBXXXX1A.dcm",  # PALETTE COLOR 8-bit
    "OBXXXX1A_2frame.dcm",
    "OBXXXX1A_expb.dcm",  # big endian 8-bit in OW: swapped words
    "gdcm-US-ALOKA-16.dcm",  # PALETTE COLOR 16-bit, Implicit VR
    "gdcm-US-ALOKA-16_big.dcm",
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "MR_small_padded.dcm",  # pixel data longer than the frames: padding dropped
]


@pytest.mark.parametrize("name", TRANSCODABLE)
def test_real_files_transcode_losslessly_to_htj2k(name):
    original = _file(name)
    result = transcode(original, DEFAULT)
    _assert_transcoded(original, result)
    assert result.reason == ""


@pytest.mark.parametrize(
    "name", ["CT_small.dcm", "693_UNCR.dcm", "emri_small.dcm", "color-pl.dcm", "OBXXXX1A_expb.dcm"]
)
def test_j2k_target(name):
    original = _file(name)
    after = _assert_transcoded(original, transcode(original, TranscodeSettings(target="j2k")), JPEG2000Lossless)
    # OpenJPEG declares the real precision: SIZ Ssiz = (BitsStored - 1) | signed bit
    fragment = _fragments(after)[1][0]
    ssiz = fragment[fragment.find(b"\xff\x51") + 40]
    assert ssiz == (after.BitsStored - 1) | (0x80 if after.PixelRepresentation else 0)


@pytest.mark.parametrize("target, syntax", [("htj2k", HTJ2KLossless), ("j2k", JPEG2000Lossless)])
def test_8_stored_bits_in_16(target, syntax):
    ds = _read(_file("emri_small.dcm"))
    ds.PixelData = (ds.pixel_array & 0xFF).astype("<u2").tobytes()
    ds.BitsStored, ds.HighBit = 8, 7
    original = _write(ds)
    _assert_transcoded(original, transcode(original, TranscodeSettings(target=target)), syntax)


def test_big_endian_palette_matches_its_little_endian_twin():
    """The big-endian LUT data (OW) must come out as the same values the LE twin holds."""
    big = _read(transcode(_file("OBXXXX1A_expb.dcm"), DEFAULT).data)
    little = _read(transcode(_file("OBXXXX1A.dcm"), DEFAULT).data)
    for colour in ("Red", "Green", "Blue"):
        keyword = f"{colour}PaletteColorLookupTableData"
        assert big[keyword].value == little[keyword].value
    assert np.array_equal(big.pixel_array, little.pixel_array)


def test_fast_path_and_pydicom_path_give_the_same_pixels():
    explicit = _file("693_UNCR.dcm")
    implicit = _write(_read(explicit), ImplicitVRLittleEndian)
    a, b = transcode(explicit, DEFAULT), transcode(implicit, DEFAULT)
    assert _fragments(_read(a.data))[1] == _fragments(_read(b.data))[1]


def test_fast_path_keeps_the_dataset_bytes_and_drops_trailing_padding():
    original = _file("CT_small.dcm")
    assert b"\xfc\xff\xfc\xff" in original[-200:]
    result = transcode(original, DEFAULT)
    meta_end = 144 + struct.unpack_from("<I", original, 140)[0]
    pixel_start = original.rfind(b"\xe0\x7f\x10\x00OW")
    new_meta_end = 144 + struct.unpack_from("<I", result.data, 140)[0]
    dataset = original[meta_end:pixel_start]
    assert result.data[new_meta_end : new_meta_end + len(dataset)] == dataset
    assert result.data[new_meta_end + len(dataset) :].startswith(PIXEL_DATA_HEADER)
    assert result.data.endswith(b"\xfe\xff\xdd\xe0\x00\x00\x00\x00")
    assert "DataSetTrailingPadding" not in _read(result.data)


@pytest.mark.parametrize("name", ["image_dfl.dcm", "CT_small.dcm", "emri_small.dcm", "color-pl.dcm"])
def test_explicit_little_endian_and_deflated_use_the_fast_path(name, monkeypatch):
    monkeypatch.setattr(transcoder, "_read_with_pydicom", lambda data: pytest.fail("slow path used"))
    original = _file(name)
    assert transcode(original, DEFAULT).outcome == "transcoded"


def test_multi_frame_output_does_not_depend_on_thread_count():
    original = _file("emri_small.dcm")
    one = transcode(original, TranscodeSettings(frame_threads=1))
    two = transcode(original, TranscodeSettings(frame_threads=2))
    four = transcode(original, TranscodeSettings(frame_threads=4))
    assert one.data == two.data == four.data


def test_top_level_pixel_data_found_after_icon_image_sequence():
    """An Icon Image Sequence holds its own (7FE0,0010); only the top-level one is transcoded."""
    for undefined_length in (True, False):
        ds = _read(_file("CT_small.dcm"))
        icon = pydicom.Dataset()
        icon.Rows, icon.Columns, icon.SamplesPerPixel = 4, 4, 1
        icon.PhotometricInterpretation = "MONOCHROME2"
        icon.BitsAllocated, icon.BitsStored, icon.HighBit, icon.PixelRepresentation = 8, 8, 7, 0
        icon.PixelData = bytes(range(16))
        ds.IconImageSequence = [icon]
        ds["IconImageSequence"].is_undefined_length = undefined_length
        original = _write(ds)
        after = _assert_transcoded(original, transcode(original, DEFAULT))
        assert after.IconImageSequence[0].PixelData == bytes(range(16))


def test_odd_sized_8_bit_frame_with_padding_byte():
    ds = _read(_file("OBXXXX1A.dcm"))
    arr = ds.pixel_array[:5, :7].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes() + b"\x00"  # 35 bytes, padded to even
    original = _write(ds)
    _assert_transcoded(original, transcode(original, DEFAULT))


# ---------------------------------------------------------------------------
# Bits Stored < Bits Allocated


def _with_junk(name: str, stored: int, signed: bool, syntax=None) -> tuple[bytes, np.ndarray]:
    """A copy of `name` whose unused high bits are random junk; returns (file, true values)."""
    ds = _read(_file(name))
    rng = np.random.default_rng(1)
    values = ds.pixel_array.astype(np.int64)
    if signed:
        values = np.clip(values - 1024, -(1 << (stored - 1)), (1 << (stored - 1)) - 1)
    else:
        values = np.clip(values, 0, (1 << stored) - 1)
    junk = rng.integers(0, 1 << (16 - stored), values.shape) << stored
    stored_words = ((values & ((1 << stored) - 1)) | junk).astype(np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = stored, stored - 1, int(signed)
    for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
        if keyword in ds:
            del ds[keyword]
    ds.PixelData = stored_words.astype("<u2").tobytes()
    return _write(ds, syntax), values.astype(np.int16 if signed else np.uint16)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian, ExplicitVRBigEndian])
@pytest.mark.parametrize("signed", [False, True])
def test_junk_in_unused_high_bits_is_cleared(signed, syntax):
    original, values = _with_junk("CT_small.dcm", 12, signed, syntax)
    if syntax == ExplicitVRBigEndian:  # pydicom writes the PixelData bytes as given: make them big endian
        ds = _read(original)
        ds.PixelData = np.frombuffer(ds.PixelData, "<u2").astype(">u2").tobytes()
        original = _write(ds)
    result = transcode(original, DEFAULT)
    after = _assert_transcoded(original, result)
    decoded = after.pixel_array
    assert np.array_equal(decoded, values)
    # the junk is gone from the codestream, not only from the decoded view
    raw = htj2k.decode(_fragments(after)[1][0])
    assert np.array_equal(raw, values)


def test_pixels_not_in_the_low_bits_are_stored_as_is():
    """HighBit 15 with BitsStored 12 puts the values in the top bits: masking would destroy them."""
    ds = _read(_file("emri_small.dcm"))
    ds.HighBit = 15
    original = _write(ds)
    _skipped(original, transcode(original, DEFAULT), "HighBit 15 is not BitsStored - 1 (11)")


def test_clearing_junk_helps_compression():
    original, values = _with_junk("CT_small.dcm", 12, False)
    clean = _read(original)
    clean.PixelData = values.tobytes()
    assert transcode(original, DEFAULT).bytes_after == transcode(_write(clean), DEFAULT).bytes_after


# ---------------------------------------------------------------------------
# Stored as it arrived


def _with_embedded_overlay(syntax=None, overlay_data: bool = False) -> bytes:
    ds = _read(_file("emri_small.dcm"))  # BitsStored 12 in 16
    ds.add_new(0x60000010, "US", ds.Rows)
    ds.add_new(0x60000011, "US", ds.Columns)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 12)
    if overlay_data:
        ds.add_new(0x60003000, "OW", b"\x00" * (ds.Rows * ds.Columns // 8))
    return _write(ds, syntax)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_overlay_in_unused_pixel_bits_is_stored_as_is(syntax):
    original = _with_embedded_overlay(syntax)
    _skipped(original, transcode(original, DEFAULT), "overlay planes embedded in unused pixel bits")


def test_overlay_with_its_own_data_is_not_embedded():
    original = _with_embedded_overlay(overlay_data=True)
    _assert_transcoded(original, transcode(original, DEFAULT))


@pytest.mark.filterwarnings("ignore::UserWarning")  # SC_rgb_jpeg.dcm's own encoding is odd
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
def test_already_compressed_is_stored_as_is(name):
    original = _file(name)
    syntax = _read(original).file_meta.TransferSyntaxUID
    _skipped(original, transcode(original, DEFAULT), f"already compressed ({syntax})")


@pytest.mark.parametrize(
    "name, reason",
    [
        ("reportsi.dcm", "no pixel data"),
        ("test-SR.dcm", "no pixel data"),
        ("rtplan.dcm", "no pixel data"),
        ("waveform_ecg.dcm", "no pixel data"),
        ("rtdose.dcm", "BitsAllocated 32"),
        ("SC_rgb_32bit.dcm", "BitsAllocated 32"),
        ("liver.dcm", "BitsAllocated 1"),
        ("SC_ybr_full_422_uncompressed.dcm", "YBR_FULL_422"),
    ],
)
def test_not_transcodable_is_stored_as_is(name, reason):
    original = _file(name)
    _skipped(original, transcode(original, DEFAULT), reason)


@pytest.mark.parametrize("syntax", [None, ImplicitVRLittleEndian])
def test_float_pixel_data_is_stored_as_is(syntax):
    ds = _read(_file("MR_small.dcm"))
    floats = ds.pixel_array.astype(np.float32)
    del ds.PixelData
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    del ds.PixelRepresentation
    ds.FloatPixelData = floats.tobytes()
    original = _write(ds, syntax)
    _skipped(original, transcode(original, DEFAULT), "float pixel data")


def test_syntax_not_configured_is_stored_as_is():
    original = _file("MR_small_implicit.dcm")
    settings = TranscodeSettings(transcodable_syntaxes=frozenset({ExplicitVRLittleEndian}))
    _skipped(original, transcode(original, settings), f"{ImplicitVRLittleEndian} is not configured")


def test_target_none_is_stored_as_is():
    original = _file("CT_small.dcm")
    result = transcode(original, TranscodeSettings(target="none"))
    _skipped(original, result, "target is none")
    assert result.syntax_before == ExplicitVRLittleEndian
    assert result.sop_instance_uid == _read(original).SOPInstanceUID


def test_min_pixel_bytes():
    original = _file("CT_small.dcm")  # 32768 bytes of pixels
    _skipped(original, transcode(original, TranscodeSettings(min_pixel_bytes=32769)), "below min_pixel_bytes")
    _assert_transcoded(original, transcode(original, TranscodeSettings(min_pixel_bytes=32768)))


# ---------------------------------------------------------------------------
# Failures, fallback and verification


def test_htj2k_encoder_exception_falls_back_to_j2k(monkeypatch, caplog):
    def broken(frame, *args):
        raise RuntimeError("encoder exploded")

    monkeypatch.setattr(htj2k, "encode", broken)
    original = _file("CT_small.dcm")
    with caplog.at_level(logging.WARNING, logger="neuronova.transcoder"):
        result = transcode(original, DEFAULT)
    _assert_transcoded(original, result, JPEG2000Lossless)
    assert "htj2k: RuntimeError: encoder exploded" in result.reason
    assert result.sop_instance_uid in caplog.text


def test_corrupted_htj2k_codestream_falls_back_to_j2k(monkeypatch):
    real = htj2k.encode
    monkeypatch.setattr(htj2k, "encode", lambda frame, *args: real(frame, *args)[:-200])
    original = _file("MR_small.dcm")
    result = transcode(original, DEFAULT)
    _assert_transcoded(original, result, JPEG2000Lossless)
    assert result.reason.startswith("htj2k: ")


def _corrupt_call(real, call: int):
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


def test_verification_mismatch_names_the_frame_and_falls_back(monkeypatch):
    decode, _ = _corrupt_call(htj2k.decode, 3)
    monkeypatch.setattr(htj2k, "decode", decode)
    original = _file("emri_small.dcm")
    result = transcode(original, TranscodeSettings(frame_threads=1))
    _assert_transcoded(original, result, JPEG2000Lossless)
    assert result.reason == "htj2k: verification mismatch in frame 3"


def test_verification_mismatch_without_fallback_fails_with_original_bytes(monkeypatch, caplog):
    decode, _ = _corrupt_call(htj2k.decode, 3)
    monkeypatch.setattr(htj2k, "decode", decode)
    ds = _read(_file("emri_small.dcm"))
    ds.PatientName = "Hong^Gildong"
    original = _write(ds)
    settings = TranscodeSettings(frame_threads=1, fallback_to_j2k=False)
    with caplog.at_level(logging.WARNING, logger="neuronova.transcoder"):
        result = transcode(original, settings)
    _failed(original, result, "verification mismatch in frame 3")
    assert result.syntax_after == result.syntax_before == ExplicitVRLittleEndian
    [record] = [r for r in caplog.records if r.name == "neuronova.transcoder"]
    assert record.levelno == logging.WARNING
    assert _read(original).SOPInstanceUID in record.getMessage()
    assert "Hong" not in caplog.text


def test_encoder_failure_without_fallback_fails_with_original_bytes(monkeypatch):
    monkeypatch.setattr(htj2k, "encode", lambda frame, *args: b"\xff\x4f\xff\x51garbage")
    original = _file("CT_small.dcm")
    _failed(original, transcode(original, TranscodeSettings(fallback_to_j2k=False)), "htj2k: ")


def test_both_backends_failing_fails_with_original_bytes(monkeypatch):
    decode, _ = _corrupt_call(htj2k.decode, 1)
    monkeypatch.setattr(htj2k, "decode", decode)
    j2k_decode, _ = _corrupt_call(j2k.decode, 1)
    monkeypatch.setattr(j2k, "decode", j2k_decode)
    original = _file("CT_small.dcm")
    _failed(original, transcode(original, DEFAULT), "j2k: verification mismatch in frame 1")


def test_verify_off_does_not_decode(monkeypatch):
    decode, calls = _corrupt_call(htj2k.decode, 1)
    monkeypatch.setattr(htj2k, "decode", decode)
    original = _file("CT_small.dcm")
    _assert_transcoded(original, transcode(original, TranscodeSettings(verify=False)))
    assert calls == []


def test_missing_imagecodecs_is_named_and_j2k_is_tried(monkeypatch):
    monkeypatch.setattr(htj2k, "imagecodecs", None)
    assert not htj2k.is_available()
    assert "imagecodecs" in htj2k.missing()
    with pytest.raises(CodecUnavailable, match="imagecodecs"):
        htj2k.encode(np.zeros((2, 2), np.uint8))
    original = _file("MR_small.dcm")
    result = transcode(original, DEFAULT)
    _assert_transcoded(original, result, JPEG2000Lossless)
    assert "htj2k: CodecUnavailable" in result.reason
    monkeypatch.setattr(j2k, "imagecodecs", None)
    _failed(original, transcode(original, DEFAULT), "JPEG 2000 needs the Python package 'imagecodecs'")


def test_unknown_target_fails():
    original = _file("CT_small.dcm")
    _failed(original, transcode(original, TranscodeSettings(target="webp")), "unknown transcoding target")


def test_backends_are_available_here():
    assert htj2k.is_available() and j2k.is_available()
    assert htj2k.TRANSFER_SYNTAX == HTJ2KLossless and j2k.TRANSFER_SYNTAX == JPEG2000Lossless


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


@pytest.mark.parametrize("data", _garbage(), ids=lambda d: f"{type(d).__name__}-{len(d) if d is not None else 0}")
def test_garbage_never_raises(data):
    result = transcode(data, DEFAULT)
    assert result.outcome in ("failed", "skipped")
    assert result.data is data and not result.changed


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom complains about the damaged values
def test_random_corruption_never_raises():
    rng = np.random.default_rng(7)
    original = bytearray(_file("CT_small.dcm"))
    for _ in range(50):
        damaged = bytearray(original)
        for position in rng.integers(132, 1500, 4):
            damaged[position] = int(rng.integers(0, 256))
        data = bytes(damaged)
        result = transcode(data, DEFAULT)
        assert result.outcome in ("transcoded", "skipped", "failed")
        if result.outcome != "transcoded":
            assert result.data is data


def test_truncated_pixel_data_is_a_failure():
    original = _file("MR_truncated.dcm")
    _failed(original, transcode(original, DEFAULT), "pixel data")


def test_package_does_not_import_orthanc():
    import sys

    assert "orthanc" not in sys.modules
    assert transcoder.log.name == "neuronova.transcoder"


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
    original = _insert_before_patient_name(_file("CT_small.dcm"), private)
    slow = []
    real = transcoder._read_with_pydicom
    monkeypatch.setattr(transcoder, "_read_with_pydicom", lambda data: slow.append(1) or real(data))
    after = _assert_transcoded(original, transcode(original, DEFAULT))
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
    original = _write(ds)
    monkeypatch.setattr(transcoder, "_read_with_pydicom", lambda data: pytest.fail("slow path used"))
    after = _assert_transcoded(original, transcode(original, DEFAULT))
    assert after.ReferencedImageSequence[0].AnatomicRegionSequence[0].CodeMeaning == "Brain"


def test_meta_saying_explicit_for_an_implicit_dataset():
    """The walker sees no VR and hands the file to pydicom, which detects the real encoding."""
    original = _file("MR_small_implicit.dcm")
    explicit = _file("MR_small.dcm")

    def meta_end(data):
        return 144 + struct.unpack_from("<I", data, 140)[0]

    mislabelled = explicit[: meta_end(explicit)] + original[meta_end(original) :]
    assert mislabelled != original
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = transcode(mislabelled, DEFAULT)
        assert result.outcome == "transcoded", result.reason
        assert np.array_equal(_read(result.data).pixel_array, _read(original).pixel_array)


def test_stale_group_lengths_are_dropped_when_photometric_changes():
    """A retired (0028,0000) would be wrong once RGB becomes YBR_RCT: the fast path drops it."""
    original = _file("SC_rgb.dcm")
    first = original.index(b"\x28\x00\x02\x00US")  # SamplesPerPixel opens group 0028 here
    pixels = original.index(b"\xe0\x7f\x10\x00OB")  # and Pixel Data directly follows the group
    assert _read(original)[0x00280002].value == 3
    group_length = b"\x28\x00\x00\x00UL\x04\x00" + struct.pack("<I", pixels - first)
    with_length = original[:first] + group_length + original[first:]
    result = transcode(with_length, DEFAULT)
    after = _assert_transcoded(with_length, result)
    assert after.PhotometricInterpretation == "YBR_RCT"
    assert b"\x28\x00\x00\x00UL" not in result.data


@pytest.mark.parametrize("name", ["US1_UNCR.dcm", "SC_rgb_16bit.dcm", "color-px.dcm"])
def test_rct_pays_off_on_real_rgb(name):
    """Why RGB becomes YBR_RCT: the colour transform shrinks real RGB images markedly."""
    frame = _read(_file(name)).pixel_array
    bits = frame.dtype.itemsize * 8
    assert len(htj2k.encode(frame, bits, True)) < 0.95 * len(htj2k.encode(frame, bits, False))
