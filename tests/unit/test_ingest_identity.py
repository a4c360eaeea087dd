"""The identity read in Orthanc's serialized received-instance callback: the header only, whatever the file."""

import tracemalloc
from io import BytesIO

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import DeflatedExplicitVRLittleEndian

from neuronova.ingest import read_identity
from neuronova.storage.layout import meta_or_none


def _deflated(extra_zeros: int) -> bytes:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.PatientID, dataset.PatientName = "CT1-0042", "HONG^GD"
    dataset.add_new(0x00290010, "LO", "BOMB")
    dataset.add_new(0x00291010, "OB", bytes(extra_zeros))  # after the identity (as pixels are)
    dataset.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_a_deflated_file_gives_its_identity_without_being_inflated_whole():
    bomb = _deflated(400 * 1024 * 1024)  # 400 MB once inflated, under 1 MB deflated
    assert len(bomb) < 1024 * 1024
    tracemalloc.start()
    sop, identity = read_identity(bomb, meta_or_none(bomb))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert (identity.patient_id, identity.name) == ("CT1-0042", "HONG^GD")
    assert sop == pydicom.dcmread(get_testdata_file("CT_small.dcm")).SOPInstanceUID
    assert identity.study_uid
    assert peak < 32 * 1024 * 1024, f"{peak} bytes allocated to read a header"


def test_a_small_deflated_file_reads_as_pydicom_reads_it():
    small = _deflated(16)
    expected = pydicom.dcmread(BytesIO(small))
    sop, identity = read_identity(small, meta_or_none(small))
    assert (sop, identity.patient_id, identity.study_uid) == (
        expected.SOPInstanceUID, expected.PatientID, expected.StudyInstanceUID)
