"""Tag rewriting and upload validation on real files, without Orthanc."""

import datetime
import struct
from io import BytesIO

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from neuronova.dicom.assign import assign_patient
from neuronova.dicom.reading import read_dicom
from neuronova.dicom.structure import MAX_SEQUENCE_DEPTH
from neuronova.directory import Patient
from neuronova.errors import NotDicom, PayloadTooLarge

MAX_INFLATED = 64 * 1024 * 1024

HONG = Patient("P-2024-001234", "Hong^Gildong", "1980-01-15", "male")
HANGUL = Patient("P-2024-001239", "홍^길순", "1992-03-08", "female")
NOW = datetime.datetime(2026, 11, 25, 10, 30, tzinfo=datetime.timezone.utc)


def ct_bytes() -> bytes:
    with open(get_testdata_file("CT_small.dcm"), "rb") as f:
        return f.read()


def roundtrip(dataset):
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return dcmread(BytesIO(buffer.getvalue()))


def test_assignment_writes_the_four_tags_and_an_audit_item():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    before = {k: str(dataset.get(k, "")) for k in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")}
    other_ids_before = len(dataset.OtherPatientIDsSequence)
    changed = assign_patient(dataset, HONG, now=NOW)
    result = roundtrip(dataset)
    assert (result.PatientID, str(result.PatientName), result.PatientBirthDate, result.PatientSex) == \
        ("P-2024-001234", "Hong^Gildong", "19800115", "M")
    assert set(changed) == {k for k, v in before.items() if v != {"PatientID": "P-2024-001234",
                                                                     "PatientName": "Hong^Gildong",
                                                                     "PatientBirthDate": "19800115",
                                                                     "PatientSex": "M"}[k]}
    (item,) = result.OriginalAttributesSequence
    assert item.ReasonForTheAttributeModification == "CORRECT"
    assert item.ModifyingSystem == "NeuroNova ingest"
    assert item.AttributeModificationDateTime.startswith("20261125103000")
    previous = item.ModifiedAttributesSequence[0]
    assert previous.PatientID == before["PatientID"]
    assert str(previous.PatientName) == before["PatientName"]
    assert len(result.OtherPatientIDsSequence) == other_ids_before + 1
    assert result.OtherPatientIDsSequence[-1].PatientID == before["PatientID"]


def test_assigning_again_changes_nothing():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    assign_patient(dataset, HONG, now=NOW)
    again = roundtrip(dataset)
    assert assign_patient(again, HONG) == []
    assert len(again.OriginalAttributesSequence) == 1


def test_reassignment_keeps_both_audit_items_and_both_old_ids():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    original_id = dataset.PatientID
    assign_patient(dataset, HONG, now=NOW)
    assign_patient(dataset, HANGUL, now=NOW)
    result = roundtrip(dataset)
    assert len(result.OriginalAttributesSequence) == 2
    assert [o.PatientID for o in result.OtherPatientIDsSequence][-2:] == [original_id, "P-2024-001234"]


def test_non_ascii_name_sets_utf8_and_survives_serialization():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    assign_patient(dataset, HANGUL, now=NOW)
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    assert "홍^길순".encode("utf-8") in buffer.getvalue()
    result = dcmread(BytesIO(buffer.getvalue()))
    assert result.SpecificCharacterSet == "ISO_IR 192"
    assert str(result.PatientName) == "홍^길순"


def test_latin1_text_is_reencoded_when_switching_to_utf8():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    dataset.SpecificCharacterSet = "ISO_IR 100"
    dataset.InstitutionName = "Hôpital Mère-Enfant"
    latin1 = dcmread(BytesIO(_write(dataset)))  # institution name stored as Latin-1 bytes
    assign_patient(latin1, HANGUL, now=NOW)
    result = dcmread(BytesIO(_write(latin1)))
    assert result.InstitutionName == "Hôpital Mère-Enfant"
    assert str(result.PatientName) == "홍^길순"


def _write(dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def test_missing_birth_date_is_written_empty():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    assign_patient(dataset, Patient("X", "Choi^Minseo", None, "unknown"), now=NOW)
    result = roundtrip(dataset)
    assert result.PatientBirthDate == "" and result.PatientSex == "O"


@pytest.mark.parametrize("data, message", [
    (b"", "empty body"),
    (b"\xff\xd8\xff\xe0" + b"\0" * 200, "no 'DICM' prefix"),
    (ct_bytes()[:5000], "truncated DICOM file"),
    (ct_bytes()[:-3], "truncated DICOM file"),
    (open(get_testdata_file("rtplan_truncated.dcm"), "rb").read(), "truncated DICOM file"),
    (open(get_testdata_file("emri_small_jpeg_2k_lossless_too_short.dcm"), "rb").read(), "truncated DICOM file"),
])
def test_bad_uploads_are_refused_with_the_reason(data, message):
    with pytest.raises(NotDicom, match=message):
        read_dicom(data, MAX_INFLATED)


def test_missing_sop_instance_uid_is_named():
    dataset = read_dicom(ct_bytes(), MAX_INFLATED)
    del dataset.SOPInstanceUID
    with pytest.raises(NotDicom, match=r"\(0008,0018\) SOPInstanceUID"):
        read_dicom(_write(dataset), MAX_INFLATED)


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "SC_rgb_2frame.dcm",
                                  "JPEG2000.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm",
                                  "image_dfl.dcm"])
def test_complete_files_of_every_syntax_pass_the_structure_walk(name):
    with open(get_testdata_file(name), "rb") as f:
        read_dicom(f.read(), MAX_INFLATED)


def _nested(depth: int, defined: bool = False) -> bytes:
    """CT_small with a private sequence nested `depth` deep, before its Pixel Data."""
    data = ct_bytes()
    at = data.find(b"\xe0\x7f\x10\x00")
    creator = struct.pack("<HH2sH", 0x0009, 0x0010, b"LO", 8) + b"NESTTEST"
    inner = b""
    for _ in range(depth):
        if defined:
            item = struct.pack("<HHL", 0xFFFE, 0xE000, len(inner)) + inner
            inner = struct.pack("<HH2sHL", 0x0009, 0x1010, b"SQ", 0, len(item)) + item
        else:
            inner = (struct.pack("<HH2sHL", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF)
                     + struct.pack("<HHL", 0xFFFE, 0xE000, 0xFFFFFFFF) + inner
                     + struct.pack("<HHL", 0xFFFE, 0xE00D, 0) + struct.pack("<HHL", 0xFFFE, 0xE0DD, 0))
    return data[:at] + creator + inner + data[at:]


@pytest.mark.parametrize("defined", [False, True])
def test_sequences_nested_too_deep_are_refused_before_pydicom_parses_them(defined):
    assert read_dicom(_nested(MAX_SEQUENCE_DEPTH, defined), MAX_INFLATED).SOPInstanceUID
    for depth in (MAX_SEQUENCE_DEPTH + 1, 48, 5000):
        with pytest.raises(NotDicom, match=f"sequences nested more than {MAX_SEQUENCE_DEPTH} deep"):
            read_dicom(_nested(depth, defined), MAX_INFLATED)


def test_a_deflated_dataset_inflating_beyond_the_limit_is_refused_without_inflating_it_all():
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    dataset.add_new(0x00091010, "OB", bytes(8 * 1024 * 1024))  # zeros: a few kB once deflated
    dataset.add_new(0x00090010, "LO", "BOMB")
    buffer = BytesIO()
    dataset.save_as(buffer, implicit_vr=False, little_endian=True, enforce_file_format=True)
    deflated = buffer.getvalue()
    meta = dcmread(BytesIO(deflated))
    meta.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = BytesIO()
    meta.save_as(buffer, enforce_file_format=True)
    bomb = buffer.getvalue()
    assert len(bomb) < 200_000
    with pytest.raises(PayloadTooLarge, match="inflates beyond 1048576 bytes"):
        read_dicom(bomb, 1024 * 1024)
    assert read_dicom(bomb, MAX_INFLATED).SOPInstanceUID == dataset.SOPInstanceUID


def test_a_meta_header_saying_jpeg_over_native_pixels_names_the_rule():
    data = bytearray(ct_bytes())
    explicit = b"1.2.840.10008.1.2.1\x00"
    at = data.find(explicit)
    jpeg = b"1.2.840.10008.1.2.4.50"
    data[at - 2:at] = struct.pack("<H", len(jpeg))
    data[at:at + len(explicit)] = jpeg
    fixed = bytes(data)
    group_length_at = fixed.find(b"\x02\x00\x00\x00UL")  # (0002,0000) follows the new meta length
    meta_length = struct.unpack_from("<L", fixed, group_length_at + 8)[0] + len(jpeg) - len(explicit)
    fixed = fixed[:group_length_at + 8] + struct.pack("<L", meta_length) + fixed[group_length_at + 12:]
    with pytest.raises(NotDicom, match=r"\(7FE0,0010\) PixelData: native pixel data under transfer syntax "
                                       r"1.2.840.10008.1.2.4.50"):
        read_dicom(fixed, MAX_INFLATED)


def test_an_unknown_vr_is_refused_at_once_not_when_a_value_is_read():
    data = ct_bytes()
    at = data.find(b"\x08\x00\x60\x00CS")  # (0008,0060) Modality
    broken = data[:at + 4] + b"ZZ" + data[at + 6:]
    with pytest.raises(NotDicom, match="unreadable DICOM file"):
        read_dicom(broken, MAX_INFLATED)
