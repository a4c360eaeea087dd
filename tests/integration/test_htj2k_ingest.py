"""Every way into Orthanc stores lossless HTJ2K, checked with an independent decoder (pylibjpeg-openjpeg)."""

import os

import numpy as np
import pytest
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import HTJ2KLossless

from support.dicom_files import parse, read_bytes
from support.dicom_net import storescu
from support.servers import OrthancServer

# Real files: CT (0.5 MB, 14-bit signed), MR 12-bit, big-endian, implicit VR, deflated, RGB (both planar
# configurations), YBR_FULL, palette colour, multi-frame, odd size, MONOCHROME1 CR, separate overlays.
TRANSCODED = ["693_UNCR.dcm", "CT_small.dcm", "MR2_UNCR.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
              "image_dfl.dcm", "US1_UNCR.dcm", "color-pl.dcm", "SC_ybr_full_uncompressed.dcm", "OBXXXX1A.dcm",
              "emri_small.dcm", "SC_rgb_small_odd.dcm", "SC_rgb_expb_16bit_2frame.dcm", "RG1_UNCR.dcm",
              "MR-SIEMENS-DICOM-WithOverlays.dcm", "gdcm-US-ALOKA-16.dcm"]
# Already compressed (lossy and lossless), float / 32-bit / 1-bit pixels, and objects without pixels.
STORED_AS_IS = ["JPEG2000.dcm", "SC_rgb_jpeg_gdcm.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm",
                "rtdose_1frame.dcm", "liver_1frame.dcm", "SC_rgb_32bit.dcm", "rtplan.dcm", "test-SR.dcm"]


def assert_same_pixels(original, stored):
    assert stored.file_meta.TransferSyntaxUID == HTJ2KLossless
    assert stored.SOPInstanceUID == original.SOPInstanceUID
    assert stored["PixelData"].VR == "OB" and stored["PixelData"].is_undefined_length
    assert stored.get("LossyImageCompression") == original.get("LossyImageCompression")  # not set by us
    expected, actual = original.pixel_array, stored.pixel_array
    # RGB is stored with the reversible colour transform (YBR_RCT), which decodes back to the same RGB.
    if (original.PhotometricInterpretation, stored.PhotometricInterpretation) not in (
            (original.PhotometricInterpretation, original.PhotometricInterpretation), ("RGB", "YBR_RCT")):
        pytest.fail(f"photometric changed: {original.PhotometricInterpretation} -> {stored.PhotometricInterpretation}")
    assert actual.shape == expected.shape
    assert np.array_equal(actual, expected)


@pytest.mark.parametrize("name", TRANSCODED)
def test_rest_ingest_stores_htj2k_with_identical_pixels(pacs, name):
    answer = pacs.post("/instances", data=read_bytes(name))
    assert answer.status_code == 200, answer.text
    stored = parse(pacs.get(f"/instances/{answer.json()['ID']}/file").content)
    assert_same_pixels(parse(read_bytes(name)), stored)
    # Exceptions: deflate already shrank that synthetic image, and a 3x3 image is smaller than any codestream.
    if name not in ("image_dfl.dcm", "SC_rgb_small_odd.dcm"):
        assert len(pacs.get(f"/instances/{answer.json()['ID']}/file").content) < len(read_bytes(name))


@pytest.mark.parametrize("name", STORED_AS_IS)
def test_compressed_and_non_image_inputs_are_stored_byte_identical(pacs, name):
    answer = pacs.post("/instances", data=read_bytes(name))
    assert answer.status_code == 200, answer.text
    assert pacs.get(f"/instances/{answer.json()['ID']}/file").content == read_bytes(name)


def test_cstore_from_storescu_stores_htj2k(pacs):
    names = ["693_UNCR.dcm", "MR_small_bigendian.dcm", "US1_UNCR.dcm", "emri_small.dcm", "MR2_UNCR.dcm"]
    sent = storescu(pacs.dicom_port, [get_testdata_file(n) for n in names])
    assert sent.returncode == 0, sent.stderr
    for name in names:
        original = parse(read_bytes(name))
        found = pacs.post("/tools/lookup", data=original.SOPInstanceUID).json()
        assert len(found) == 1, name
        assert_same_pixels(original, parse(pacs.get(f"{found[0]['Path']}/file").content))


def test_stow_rs_stores_htj2k(pacs):
    boundary = "neuronova-boundary"
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + read_bytes("CT_small.dcm")
            + f"\r\n--{boundary}--\r\n".encode())
    answer = pacs.post("/dicom-web/studies", data=body, headers={
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json"})
    assert answer.status_code == 200, answer.text
    original = parse(read_bytes("CT_small.dcm"))
    (found,) = pacs.post("/tools/lookup", data=original.SOPInstanceUID).json()
    assert_same_pixels(original, parse(pacs.get(f"{found['Path']}/file").content))


def test_upload_route_stores_htj2k(pacs):
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("693_UNCR.dcm"),
                       headers={"Content-Type": "application/dicom"})
    stored = parse(pacs.get(f"/instances/{answer.json()['orthanc_response']['ID']}/file").content)
    assert_same_pixels(parse(read_bytes("693_UNCR.dcm")), stored)
    assert stored.PatientID == "P-2024-001234"


@pytest.fixture(scope="module")
def uncompressed_pacs(tmp_path_factory):
    """A second Orthanc with transcoding off: its core renders the reference previews."""
    server = OrthancServer(str(tmp_path_factory.mktemp("plain")),
                           {"NeuroNova": {"Transcoding": {"Target": "none"}}}).start()
    yield server
    server.stop()


@pytest.mark.parametrize("name, frame", [("693_UNCR.dcm", 0), ("RG1_UNCR.dcm", 0), ("emri_small.dcm", 7),
                                         ("US1_UNCR.dcm", 0), ("MR_small_bigendian.dcm", 0)])
def test_previews_of_htj2k_match_orthancs_own_rendering(pacs, uncompressed_pacs, name, frame):
    import imagecodecs

    ours = pacs.post("/instances", data=read_bytes(name)).json()["ID"]
    reference = uncompressed_pacs.post("/instances", data=read_bytes(name)).json()["ID"]
    uri = f"/instances/{{}}/frames/{frame}/preview"
    answer = pacs.get(uri.format(ours))
    assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/png"
    expected = imagecodecs.png_decode(uncompressed_pacs.get(uri.format(reference)).content)
    image = imagecodecs.png_decode(answer.content)
    original = parse(read_bytes(name))
    assert image.shape[:2] == (original.Rows, original.Columns)
    assert image.shape == expected.shape
    assert np.abs(image.astype(int) - expected.astype(int)).max() <= 1
    if frame == 0:
        assert pacs.get(f"/instances/{ours}/preview").content == answer.content


def test_preview_of_a_missing_frame_is_a_404_and_other_instances_go_to_the_core(pacs):
    ours = pacs.post("/instances", data=read_bytes("CT_small.dcm")).json()["ID"]
    assert pacs.get(f"/instances/{ours}/frames/3/preview").status_code == 404
    jpeg2000 = pacs.post("/instances", data=read_bytes("JPEG2000.dcm")).json()["ID"]
    answer = pacs.get(f"/instances/{jpeg2000}/preview")
    assert answer.status_code == 200 and answer.content.startswith(b"\x89PNG")


@pytest.fixture(scope="module")
def broken_encoders_pacs(tmp_path_factory):
    support = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "support", "broken_encoders")
    server = OrthancServer(str(tmp_path_factory.mktemp("broken")), extra_pythonpath=(support,)).start()
    yield server
    server.stop()


def test_encoder_failure_stores_the_original_and_logs_the_sop_instance_uid(broken_encoders_pacs):
    pacs = broken_encoders_pacs
    for name in ("CT_small.dcm", "emri_small.dcm"):
        answer = pacs.post("/instances", data=read_bytes(name))
        assert answer.status_code == 200
        assert pacs.get(f"/instances/{answer.json()['ID']}/file").content == read_bytes(name)
        assert parse(read_bytes(name)).SOPInstanceUID in pacs.log_text()
    sent = storescu(pacs.dicom_port, [get_testdata_file("MR_small.dcm")])
    assert sent.returncode == 0
    assert len(pacs.instances()) == 3
    assert requests.get(pacs.url + "/system", timeout=5).ok
