"""GET /neuronova/instances/{id}/uncompressed: any stored instance as Explicit VR Little Endian, same
SOP Instance UID, pixels identical to the original's as decoded by pydicom with pylibjpeg-openjpeg
(JPEG 2000 family), Pillow (lossy JPEG) or pydicom itself (RLE, uncompressed)."""

import numpy as np
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from support.dicom_files import parse, read_bytes
from support.servers import OrthancServer

# Stored as HTJ2K by the plugin (see test_htj2k_ingest.TRANSCODED)
HTJ2K_STORED = ["693_UNCR.dcm", "CT_small.dcm", "MR2_UNCR.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm",
                "image_dfl.dcm", "US1_UNCR.dcm", "color-pl.dcm", "SC_ybr_full_uncompressed.dcm", "OBXXXX1A.dcm",
                "emri_small.dcm", "SC_rgb_small_odd.dcm", "SC_rgb_expb_16bit_2frame.dcm", "RG1_UNCR.dcm",
                "MR-SIEMENS-DICOM-WithOverlays.dcm", "gdcm-US-ALOKA-16.dcm"]
# Stored as they arrived: other compressed syntaxes, decoded by the route
OTHER_COMPRESSED = ["JPEG2000.dcm", "US1_J2KR.dcm", "emri_small_jpeg_2k_lossless.dcm", "RG1_J2KR.dcm",
                    "MR_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm",
                    "JPGLosslessP14SV1_1s_1f_8b.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm",
                    "SC_jpeg_no_color_transform.dcm", "SC_rgb_dcmtk_+eb+cr.dcm"]


def download(server, name):
    instance = server.post("/instances", data=read_bytes(name)).json()["ID"]
    answer = server.get(f"/neuronova/instances/{instance}/uncompressed")
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/dicom"
    return answer.content


def reference_pixels(name, original):
    """pydicom's pixels; lossless JPEG (no pydicom plugin installed for it here) through libjpeg-turbo."""
    if original.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"):
        import imagecodecs
        from pydicom.encaps import generate_frames

        frames = [imagecodecs.jpeg8_decode(frame) for frame in generate_frames(
            original.PixelData, number_of_frames=int(original.get("NumberOfFrames", 1) or 1))]
        return frames[0] if len(frames) == 1 else np.stack(frames)
    if original.file_meta.TransferSyntaxUID in ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"):
        twin = {"MR_small_jpeg_ls_lossless.dcm": "MR_small.dcm"}[name]  # the same image, uncompressed
        return parse(read_bytes(twin)).pixel_array
    return original.pixel_array


def assert_uncompressed_copy(name, data):
    original, copy = parse(read_bytes(name)), parse(data)
    assert copy.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert copy.SOPInstanceUID == original.SOPInstanceUID == copy.file_meta.MediaStorageSOPInstanceUID
    assert not copy["PixelData"].is_undefined_length
    expected, actual = reference_pixels(name, original), copy.pixel_array
    assert actual.shape == expected.shape and actual.dtype.str[1:] == expected.dtype.str[1:]  # any byte order
    assert np.array_equal(actual, expected)
    if original.SamplesPerPixel == 3:
        # pydicom hands YBR_FULL_422 JPEG, YBR_RCT and RGB over as RGB; the copy must say what it holds
        expected_photometric = original.PhotometricInterpretation
        if expected_photometric in ("YBR_RCT", "YBR_ICT") or original.file_meta.TransferSyntaxUID in (
                "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"):
            expected_photometric = "RGB"
        assert copy.PhotometricInterpretation == expected_photometric
        assert copy.PlanarConfiguration == 0
    for keyword in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID", "Rows", "Columns", "BitsStored"):
        assert copy.get(keyword) == original.get(keyword), keyword


@pytest.mark.parametrize("name", HTJ2K_STORED)
def test_htj2k_instances_download_uncompressed_with_identical_pixels(pacs, name):
    assert_uncompressed_copy(name, download(pacs, name))


@pytest.mark.parametrize("name", OTHER_COMPRESSED)
def test_other_compressed_instances_download_uncompressed(pacs, name):
    assert_uncompressed_copy(name, download(pacs, name))


@pytest.fixture(scope="module")
def plain_pacs(tmp_path_factory):
    """Transcoding off: uncompressed files stay in their own transfer syntax."""
    server = OrthancServer(str(tmp_path_factory.mktemp("plain")),
                           {"NeuroNova": {"Transcoding": {"Target": "none"}}}).start()
    yield server
    server.stop()


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "MR_small_implicit.dcm", "image_dfl.dcm",
                                  "OBXXXX1A.dcm", "SC_rgb_expb_16bit_2frame.dcm"])
def test_other_uncompressed_syntaxes_become_explicit_little_endian(plain_pacs, name):
    assert_uncompressed_copy(name, download(plain_pacs, name))


def test_explicit_little_endian_is_the_stored_file_and_errors(plain_pacs):
    instance = plain_pacs.post("/instances", data=read_bytes("CT_small.dcm")).json()["ID"]
    stored = plain_pacs.get(f"/instances/{instance}/file").content
    assert parse(stored).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert plain_pacs.get(f"/neuronova/instances/{instance}/uncompressed").content == stored
    plan = parse(download(plain_pacs, "rtplan.dcm"))  # Implicit VR, no pixels
    assert plan.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert plan.SOPInstanceUID == parse(read_bytes("rtplan.dcm")).SOPInstanceUID
    assert len(plan.BeamSequence) == len(parse(read_bytes("rtplan.dcm")).BeamSequence)
    assert plain_pacs.get("/neuronova/instances/nope/uncompressed").status_code == 404
    assert plain_pacs.post("/neuronova/instances/nope/uncompressed", data=b"").status_code == 405


def test_12_bit_lossy_jpeg_is_refused_without_harm(pacs):
    # libjpeg-turbo 3 (imagecodecs) decoding 12-bit JPEG inside Orthanc (libjpeg 6.2) killed Orthanc
    instance = pacs.post("/instances", data=read_bytes("JPGExtended.dcm")).json()["ID"]
    answer = pacs.get(f"/neuronova/instances/{instance}/uncompressed")
    assert answer.status_code == 415 and "12-bit" in answer.json()["error"]
