"""Tag rewriting and upload validation on real files, without Orthanc."""

import datetime
from io import BytesIO

import pytest
from pydicom import dcmread, dcmwrite
from pydicom.data import get_testdata_file

from neuronova.dicom.assign import assign_patient
from neuronova.dicom.reading import read_dicom
from neuronova.directory import Patient
from neuronova.errors import NotDicom

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
    dataset = read_dicom(ct_bytes())
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
    dataset = read_dicom(ct_bytes())
    assign_patient(dataset, HONG, now=NOW)
    again = roundtrip(dataset)
    assert assign_patient(again, HONG) == []
    assert len(again.OriginalAttributesSequence) == 1


def test_reassignment_keeps_both_audit_items_and_both_old_ids():
    dataset = read_dicom(ct_bytes())
    original_id = dataset.PatientID
    assign_patient(dataset, HONG, now=NOW)
    assign_patient(dataset, HANGUL, now=NOW)
    result = roundtrip(dataset)
    assert len(result.OriginalAttributesSequence) == 2
    assert [o.PatientID for o in result.OtherPatientIDsSequence][-2:] == [original_id, "P-2024-001234"]


def test_non_ascii_name_sets_utf8_and_survives_serialization():
    dataset = read_dicom(ct_bytes())
    assign_patient(dataset, HANGUL, now=NOW)
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    assert "홍^길순".encode("utf-8") in buffer.getvalue()
    result = dcmread(BytesIO(buffer.getvalue()))
    assert result.SpecificCharacterSet == "ISO_IR 192"
    assert str(result.PatientName) == "홍^길순"


def test_latin1_text_is_reencoded_when_switching_to_utf8():
    dataset = read_dicom(ct_bytes())
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
    dataset = read_dicom(ct_bytes())
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
        read_dicom(data)


def test_missing_sop_instance_uid_is_named():
    dataset = read_dicom(ct_bytes())
    del dataset.SOPInstanceUID
    with pytest.raises(NotDicom, match=r"\(0008,0018\) SOPInstanceUID"):
        read_dicom(_write(dataset))


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "SC_rgb_2frame.dcm",
                                  "JPEG2000.dcm", "rtplan.dcm", "test-SR.dcm", "waveform_ecg.dcm",
                                  "image_dfl.dcm"])
def test_complete_files_of_every_syntax_pass_the_structure_walk(name):
    with open(get_testdata_file(name), "rb") as f:
        read_dicom(f.read())
