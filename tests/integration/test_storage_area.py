"""The plugin as Orthanc's storage area, on a real Orthanc: every path into Orthanc reads back the
received bytes exactly, while the disk holds HTJ2K that an independent decoder (pydicom with
pylibjpeg-openjpeg, not the imagecodecs that encoded it) reads with the very same pixels."""

from __future__ import annotations

import os
from io import BytesIO

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, HTJ2KLossless, generate_uid
from pynetdicom import AE, StoragePresentationContexts

from support.dicom_files import parse, read_bytes
from support.dicom_net import storescu
from support.servers import OrthancServer

# Real files: CT (0.5 MB), MR 12-bit, big-endian, implicit VR, RGB (both planar configurations),
# YBR_FULL, palette colour, multi-frame, odd size, MONOCHROME1 CR, overlays in their own group.
COMPRESSED = ["693_UNCR.dcm", "CT_small.dcm", "MR2_UNCR.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
              "US1_UNCR.dcm", "color-pl.dcm", "SC_ybr_full_uncompressed.dcm", "OBXXXX1A.dcm", "emri_small.dcm",
              "SC_rgb_small_odd.dcm", "SC_rgb_expb_16bit_2frame.dcm", "RG1_UNCR.dcm",
              "MR-SIEMENS-DICOM-WithOverlays.dcm", "gdcm-US-ALOKA-16.dcm"]
# Already compressed (lossy and lossless), deflated, float / 32-bit / 1-bit pixels, no pixels.
STORED_AS_RECEIVED = ["JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                      "image_dfl.dcm", "rtdose_1frame.dcm", "liver_1frame.dcm", "SC_rgb_32bit.dcm", "rtplan.dcm",
                      "test-SR.dcm"]


def assert_htj2k_on_disk(received: bytes, on_disk: bytes) -> None:
    stored = pydicom.dcmread(BytesIO(on_disk))
    original = pydicom.dcmread(BytesIO(received))
    assert stored.file_meta.TransferSyntaxUID == HTJ2KLossless
    assert stored["PixelData"].is_undefined_length and stored.SOPInstanceUID == original.SOPInstanceUID
    assert len(on_disk) < len(received) or original.Rows * original.Columns < 100  # 3x3: smaller than any codestream
    assert np.array_equal(stored.pixel_array, original.pixel_array)  # YBR_RCT decodes to the same RGB


@pytest.mark.parametrize("name", COMPRESSED)
def test_rest_ingest_reads_back_exact_and_is_htj2k_on_disk(pacs, name):
    received = read_bytes(name)
    answer = pacs.post("/instances", data=received)
    assert answer.status_code == 200 and answer.json()["Status"] == "Success", answer.text
    instance = answer.json()["ID"]
    assert pacs.get(f"/instances/{instance}/file").content == received
    assert_htj2k_on_disk(received, pacs.stored_file(instance))
    assert pacs.post(f"/instances/{instance}/attachments/dicom/verify-md5", data=b"").status_code == 200


@pytest.mark.parametrize("name", STORED_AS_RECEIVED)
def test_what_cannot_be_compressed_losslessly_is_stored_as_received(pacs, name):
    received = read_bytes(name)
    instance = pacs.post("/instances", data=received).json()["ID"]
    assert pacs.stored_file(instance) == received
    assert pacs.get(f"/instances/{instance}/file").content == received


def _with_values_above_bits_stored(name: str, bits_stored: int) -> bytes:
    """A file whose Bits Stored understates its values (seen from real modalities): not lossless
    when the encoder only keeps Bits Stored; the bits above come back from the container's residual."""
    dataset = parse(read_bytes(name))
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset.BitsStored, dataset.HighBit = bits_stored, bits_stored - 1
    out = BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


@pytest.mark.parametrize("name, bits", [("693_UNCR.dcm", 10), ("CT_small.dcm", 8), ("MR_small.dcm", 9)])
def test_values_above_bits_stored_come_back_byte_for_byte(pacs, name, bits):
    received = _with_values_above_bits_stored(name, bits)
    pixels = np.frombuffer(parse(received).PixelData, "<u2")
    assert (pixels >> bits).any()  # the test means something: values really use the bits above
    instance = pacs.post("/instances", data=received).json()["ID"]
    assert pacs.get(f"/instances/{instance}/file").content == received
    stored = pydicom.dcmread(BytesIO(pacs.stored_file(instance)))
    assert stored.file_meta.TransferSyntaxUID == HTJ2KLossless


def test_cstore_is_answered_success_and_keeps_orthancs_metadata(pacs):
    """storescu and pynetdicom: status 0x0000, the stored copy is Orthanc's own (Origin DicomProtocol,
    RemoteAET, CalledAET), exact on read, HTJ2K on disk."""
    names = ["693_UNCR.dcm", "MR_small_bigendian.dcm", "US1_UNCR.dcm", "emri_small.dcm"]
    from pydicom.data import get_testdata_file
    sent = storescu(pacs.dicom_port, [get_testdata_file(n) for n in names], calling_aet="CT1")
    assert sent.returncode == 0, sent.stderr
    for name in names:
        received = read_bytes(name)
        (found,) = pacs.post("/tools/lookup", data=parse(received).SOPInstanceUID).json()
        instance = found["ID"]
        # Orthanc writes its own file meta for a C-STORE (tests/differential compares it with a
        # plugin-less Orthanc's): the pixels are the ones sent
        read_back, sent_dataset = parse(pacs.get(f"/instances/{instance}/file").content), parse(received)
        assert read_back.SOPInstanceUID == sent_dataset.SOPInstanceUID
        assert np.array_equal(read_back.pixel_array, sent_dataset.pixel_array)
        metadata = pacs.get(f"/instances/{instance}/metadata?expand").json()
        assert metadata["Origin"] == "DicomProtocol" and metadata["RemoteAET"] == "CT1"
        assert metadata["CalledAET"] == pacs.aet
        assert_htj2k_on_disk(pacs.get(f"/instances/{instance}/file").content, pacs.stored_file(instance))

    ae = AE(ae_title="PYNET")
    ae.requested_contexts = StoragePresentationContexts
    association = ae.associate("127.0.0.1", pacs.dicom_port, ae_title=pacs.aet)
    assert association.is_established
    try:
        dataset = parse(read_bytes("CT_small.dcm"))
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        status = association.send_c_store(dataset)
    finally:
        association.release()
    assert status.Status == 0x0000


def test_stow_rs_and_the_upload_route_are_stored_the_same_way(pacs):
    boundary = "neuronova-boundary"
    received = read_bytes("CT_small.dcm")
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + received
            + f"\r\n--{boundary}--\r\n".encode())
    answer = pacs.post("/dicom-web/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert answer.status_code == 200, answer.text
    (found,) = pacs.post("/tools/lookup", data=parse(received).SOPInstanceUID).json()
    assert_htj2k_on_disk(received, pacs.stored_file(found["ID"]))

    answer = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("693_UNCR.dcm"),
                       headers={"Content-Type": "application/dicom"})
    assert answer.status_code == 200, answer.text
    instance = answer.json()["orthanc_response"]["ID"]
    read_back = pacs.get(f"/instances/{instance}/file").content
    assert parse(read_back).PatientID == "P-2024-001234"
    assert_htj2k_on_disk(read_back, pacs.stored_file(instance))


def test_an_htj2k_arrival_is_made_readable_to_the_core_and_kept_htj2k_on_disk(pacs):
    """A standard HTJ2K file (the container minus the plugin's private block): decoded for Orthanc,
    which can then anonymize it, and HTJ2K again on disk."""
    from neuronova.storage import container

    original = read_bytes("MR_small.dcm")
    htj2k = parse(container.pack(original, container.PackSettings()).data)
    for tag in [tag for tag in htj2k.keys() if tag.group == 0x7FE3]:
        del htj2k[tag]
    out = BytesIO()
    htj2k.save_as(out, enforce_file_format=True)
    answer = pacs.post("/instances", data=out.getvalue())
    assert answer.status_code == 200, answer.text
    instance = answer.json()["ID"]
    read_back = parse(pacs.get(f"/instances/{instance}/file").content)
    assert read_back.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(read_back.pixel_array, parse(original).pixel_array)
    assert pydicom.dcmread(BytesIO(pacs.stored_file(instance))).file_meta.TransferSyntaxUID == HTJ2KLossless
    assert pacs.post(f"/instances/{instance}/anonymize", json={}).status_code == 200


def test_storage_route_reports_the_bytes_on_disk(pacs):
    before = pacs.get("/neuronova/storage").json()
    received = read_bytes("693_UNCR.dcm")
    instance = pacs.post("/instances", data=received).json()["ID"]
    after = pacs.get("/neuronova/storage").json()
    assert after["success"] and after["when"] == "ingest"
    assert after["received_bytes"] - before["received_bytes"] >= len(received)
    on_disk = len(pacs.stored_file(instance))
    assert after["stored_bytes"] - before["stored_bytes"] < len(received) - on_disk + on_disk + 10000
    assert after["compressed_files"] == before["compressed_files"] + 1
    entry = pacs.get("/neuronova/history?limit=1").json()["entries"][0]
    assert (entry["bytes_before"], entry["bytes_after"]) == (len(received), on_disk)
    assert entry["syntax_after"] == HTJ2KLossless


def test_wado_rs_frames_answer_the_stored_codestream_to_who_accepts_htj2k(pacs):
    from neuronova.storage import container

    received = read_bytes("emri_small.dcm")
    instance = pacs.post("/instances", data=received).json()["ID"]
    dataset = parse(received)
    uri = (f"/dicom-web/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}"
           f"/instances/{dataset.SOPInstanceUID}/frames/2,5")
    _, codestreams = container.frame_codestreams(pacs.stored_file(instance))
    for accept in ('multipart/related; type="application/octet-stream"; transfer-syntax=*', "*/*",
                   'multipart/related; type="image/jphc"'):
        answer = pacs.get(uri, headers={"Accept": accept})
        assert answer.status_code == 200, answer.text
        assert HTJ2KLossless in answer.headers["Content-Type"]
        assert bytes(codestreams[1]) in answer.content and bytes(codestreams[4]) in answer.content
    answer = pacs.get(uri, headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    frame_bytes = dataset.Rows * dataset.Columns * 2
    assert dataset.PixelData[frame_bytes:2 * frame_bytes] in answer.content
    assert HTJ2KLossless not in answer.headers["Content-Type"]


@pytest.fixture(scope="module")
def broken_encoders_pacs(tmp_path_factory):
    support = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "broken_encoders")
    server = OrthancServer(str(tmp_path_factory.mktemp("broken")), extra_pythonpath=(support,)).start()
    yield server
    server.stop()


def test_encoder_failure_stores_the_received_file_and_logs_the_sop_instance_uid(broken_encoders_pacs):
    pacs = broken_encoders_pacs
    for name in ("CT_small.dcm", "emri_small.dcm"):
        received = read_bytes(name)
        answer = pacs.post("/instances", data=received)
        assert answer.status_code == 200
        assert pacs.stored_file(answer.json()["ID"]) == received
        assert pacs.get(f"/instances/{answer.json()['ID']}/file").content == received
        assert parse(received).SOPInstanceUID in pacs.log_text()
    from pydicom.data import get_testdata_file
    assert storescu(pacs.dicom_port, [get_testdata_file("MR_small.dcm")]).returncode == 0
    assert len(pacs.instances()) == 3
