"""NIfTI import through a running Orthanc: real NIfTI files from PyPI wheels and nibabel's test images
become MR series, Parametric Maps and Segmentations under the EMR patient; what is stored is read back
by independent readers (dcm2niix, dicom2nifti, SimpleITK, highdicom) and validated by dciodvfy; every
refusal answers 400 naming the cause and stores nothing."""

from __future__ import annotations

import struct

import nibabel
import numpy as np
import pytest
from support.nifti_files import (
    RAS_LPS,
    by_dcm2niix,
    by_dicom2nifti,
    by_highdicom,
    by_simpleitk,
    canonical,
    dciodvfy_errors,
    expected,
    nifti_bytes,
    parse,
    read_bytes,
    segmentation_labels,
    with_scaling,
    write_series,
)
from support.servers import OrthancServer

PATIENT = "P-2024-001234"
NIFTI = {"Content-Type": "application/octet-stream"}
MNI_T1 = "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
MNI_GM = "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz"
MNI_WM = "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz"
STAT_MAP = "image_10426.nii.gz"
OBLIQUE = "aniso_vox.nii.gz"  # dipy: oblique, scanner space
OBLIQUE_FLOAT = "ascm_out_test.nii.gz"  # dipy: float64 on the same oblique grid
SHEARED = "S0_10slices.nii.gz"  # dipy: a sheared sform
BIG_ENDIAN_LAS = "anatomical.nii"  # nibabel: >i2, LAS
FOUR_D = "example4d.nii.gz"  # nibabel: int16, 2 volumes
FORM_CONFLICT = "example_nifti2.nii.gz"  # nibabel: NIfTI-2 whose sform and qform are 0.004 mm apart


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = OrthancServer(str(tmp_path_factory.mktemp("orthanc")),
                           {"NeuroNova": {"Nifti": {"FloatCompanion": True, "MaxDimension": 256}}}).start()
    yield server
    server.stop()


def upload(pacs, body: bytes, patient: str = PATIENT, **headers):
    return pacs.post(f"/neuronova/upload/{patient}", data=body, headers={**NIFTI, **headers})


def add_to_study(pacs, study: str, body: bytes, **headers):
    return pacs.post(f"/neuronova/studies/{study}/nifti", data=body, headers={**NIFTI, **headers})


def imported(answer) -> dict:
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True
    return body


def series_of(body: dict, kind: str) -> dict:
    (series,) = [s for s in body["series"] if s["kind"] == kind]
    return series


def assert_same_volume(read, wanted, what: str, exact: bool = True):
    voxels, affine = read
    wanted_voxels, wanted_affine = wanted
    assert voxels.shape == wanted_voxels.shape, what
    assert np.abs(affine - wanted_affine).max() < 1e-3, f"{what}: affine\n{affine}\nvs\n{wanted_affine}"
    if exact:
        assert np.array_equal(voxels, wanted_voxels, equal_nan=True), what
    else:
        assert np.allclose(voxels, wanted_voxels, equal_nan=True), what


def assert_positions_follow_the_affine(pacs, series: dict, affine_ras: np.ndarray):
    """Each slice's Image Position (Patient), against the NIfTI affine applied to voxel (0, 0, k)."""
    for instance in series["instances"]:
        tags = pacs.get(f"/instances/{instance}/simplified-tags").json()
        k = int(tags["InstanceNumber"]) - 1
        position = [float(v) for v in tags["ImagePositionPatient"].split("\\")]
        wanted = (RAS_LPS @ affine_ras @ np.array([0.0, 0.0, k, 1.0]))[:3]
        assert np.abs(np.array(position) - wanted).max() < 1e-3, (k, position, wanted)


def three_readers(pacs, series: dict, folder, wanted, what: str):
    files = write_series(pacs, series["instances"], str(folder / "series"))
    assert len(files) == len(series["instances"])
    for reader in (by_dcm2niix, by_dicom2nifti, by_simpleitk):
        assert_same_volume(reader(str(folder / "series")), wanted, f"{what} read by {reader.__name__}")
    return files


def no_dciodvfy_errors(pacs, instance: str, folder, name: str):
    errors = dciodvfy_errors(pacs.get(f"/instances/{instance}/file").content, str(folder), name)
    assert errors == [], errors


def load(name: str) -> nibabel.Nifti1Image:
    from support.nifti_files import path
    return nibabel.load(path(name))


def test_mni_t1_becomes_a_new_study_of_the_emr_patient(pacs, tmp_path):
    image = load(MNI_T1)
    body = imported(upload(pacs, read_bytes(MNI_T1), **{"X-NeuroNova-Filename": MNI_T1}))
    assert body["patient_id"] == PATIENT and body["study"]["created"] is True
    mr = series_of(body, "mr")
    assert len(mr["instances"]) == image.shape[2] == body["instance_count"]
    assert mr["SeriesDescription"] == "mni_icbm152_t1_tal_nlin_sym_09a_converted"
    study = pacs.get(f"/studies/{body['study']['ID']}").json()
    assert study["PatientMainDicomTags"]["PatientID"] == PATIENT
    assert study["PatientMainDicomTags"]["PatientName"] == "Hong^Gildong"
    first = parse(pacs.get(f"/instances/{mr['instances'][0]}/file").content)
    assert first.SOPClassUID == "1.2.840.10008.5.1.4.1.1.4" and list(first.ImageType)[:2] == ["DERIVED", "SECONDARY"]
    assert first.PatientBirthDate == "19800115" and first.PatientSex == "M"
    # the ordinary pipeline: stored HTJ2K on disk, recorded as an upload assigned to the patient
    assert pacs.stored_file(mr["instances"][0])[128:132] == b"DICM"
    assert b"1.2.840.10008.1.2.4.201" in pacs.stored_file(mr["instances"][0])[:1024]
    history = pacs.get(f"/neuronova/history?study={first.StudyInstanceUID}&limit=1000").json()["entries"]
    assert len(history) == len(mr["instances"]) and {e["action"] for e in history} == {"assigned"}
    listed = pacs.get("/neuronova/studies?limit=50").json()["studies"]
    assert any(s["id"] == body["study"]["ID"] and s["instance_count"] == len(mr["instances"]) for s in listed)

    wanted = expected(image)
    three_readers(pacs, mr, tmp_path, wanted, "MNI T1")
    assert_positions_follow_the_affine(pacs, mr, image.affine)
    no_dciodvfy_errors(pacs, mr["instances"][0], tmp_path, "first.dcm")
    no_dciodvfy_errors(pacs, mr["instances"][-1], tmp_path, "last.dcm")


def test_probability_maps_and_a_segmentation_join_the_reference_study(pacs, tmp_path):
    t1 = imported(upload(pacs, read_bytes(MNI_T1)))
    study_uid = t1["study"]["StudyInstanceUID"]
    t1_frame = t1["frame_of_reference"]["uid"]
    grey = imported(add_to_study(pacs, study_uid, read_bytes(MNI_GM)))  # by StudyInstanceUID
    white = imported(add_to_study(pacs, t1["study"]["ID"], read_bytes(MNI_WM)))  # by Orthanc ID
    for answer in (grey, white):
        assert answer["study"] == {**t1["study"], "created": False}
        assert answer["patient_id"] == PATIENT
        # template space (the ICBM 152 grid): always a Frame of Reference of its own
        assert answer["frame_of_reference"]["uid"] != t1_frame and "template" in answer["frame_of_reference"]["from"]
    assert [s["SeriesNumber"] for s in (t1["series"] + grey["series"] + white["series"])] == [1, 2, 3]
    assert len(pacs.get(f"/studies/{t1['study']['ID']}").json()["Series"]) == 3
    for name, answer in ((MNI_GM, grey), (MNI_WM, white)):
        image = load(name)
        assert_same_volume(by_simpleitk(write_series(pacs, series_of(answer, "mr")["instances"],
                                                     str(tmp_path / name))[0].rsplit("/", 1)[0]),
                           expected(image), name)

    # a label map of the grey matter: its source is the T1 series (same planes), found by geometry
    grey_matter = load(MNI_GM)
    labels = (np.asanyarray(grey_matter.dataobj) > 100).astype(np.uint8) + (np.asanyarray(grey_matter.dataobj) > 200)
    label_file = nibabel.Nifti1Image(labels, grey_matter.affine)
    label_file.header.set_intent("label")
    seg_answer = imported(add_to_study(pacs, study_uid, nifti_bytes(label_file, compress=True)))
    seg = series_of(seg_answer, "segmentation")
    assert seg_answer["source_series"]["SeriesInstanceUID"] == series_of(t1, "mr")["SeriesInstanceUID"]
    assert seg_answer["frame_of_reference"]["uid"] == t1_frame
    dicom = pacs.get(f"/instances/{seg['instances'][0]}/file").content
    stored = parse(dicom)
    assert stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and stored.SegmentationType == "BINARY"
    assert stored.FrameOfReferenceUID == t1_frame
    referenced = {item.ReferencedSOPInstanceUID for item in stored.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert len(referenced) == grey_matter.shape[2]
    assert [item.SegmentLabel for item in stored.SegmentSequence] == ["Label 1", "Label 2"]
    assert_same_volume(segmentation_labels(dicom), canonical(labels, grey_matter.affine), "SEG labels in world space")
    assert dciodvfy_errors(dicom, str(tmp_path), "seg.dcm") == []

    # the same labels as a LABELMAP Segmentation, the source named explicitly
    labelmap = imported(add_to_study(pacs, study_uid, nifti_bytes(label_file), **{
        "X-NeuroNova-Nifti-Segmentation": "labelmap",
        "X-NeuroNova-Nifti-Source-Series": series_of(t1, "mr")["ID"]}))
    dicom = pacs.get(f"/instances/{series_of(labelmap, 'segmentation')['instances'][0]}/file").content
    assert parse(dicom).SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.7"  # Label Map Segmentation Storage
    assert_same_volume(segmentation_labels(dicom), canonical(labels, grey_matter.affine), "LABELMAP SEG labels")
    # dciodvfy of dicom3tools 2022 (Debian 12) predates the Label Map Segmentation SOP class: not validated here


def test_float_statistical_map_is_an_exact_parametric_map_with_a_viewable_companion(pacs, tmp_path):
    image = load(STAT_MAP)
    body = imported(upload(pacs, read_bytes(STAT_MAP)))
    pm = series_of(body, "parametric-map")
    dicom = pacs.get(f"/instances/{pm['instances'][0]}/file").content
    stored = parse(dicom)
    assert stored.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30" and stored.BitsAllocated == 32
    assert "FloatPixelData" in stored and "SourceImageSequence" not in stored
    values = np.asanyarray(image.dataobj).astype(np.float32)
    assert_same_volume(by_highdicom(dicom), canonical(values, image.affine), "stat map read by highdicom")
    # pydicom alone: frame k holds plane k, rows along j, columns along i
    frames = np.frombuffer(stored.FloatPixelData, dtype="<f4").reshape(image.shape[2], image.shape[1], image.shape[0])
    assert np.array_equal(frames.transpose(2, 1, 0), values, equal_nan=True)
    for index, item in enumerate(stored.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        assert np.abs(np.array(position) - (RAS_LPS @ image.affine @ [0, 0, index, 1])[:3]).max() < 1e-3
    assert dciodvfy_errors(dicom, str(tmp_path), "pm.dcm") == []
    # the companion (NeuroNova.Nifti.FloatCompanion): int16 with Rescale Slope/Intercept, approximately the map
    companion = series_of(body, "companion")
    read = by_dcm2niix(str(tmp_path / "companion")) if write_series(
        pacs, companion["instances"], str(tmp_path / "companion")) else None
    slope = float(pacs.get(f"/instances/{companion['instances'][0]}/simplified-tags").json()["RescaleSlope"])
    wanted = canonical(values.astype(np.float64), image.affine)
    assert read[0].shape == wanted[0].shape and np.abs(read[1] - wanted[1]).max() < 1e-3
    assert np.nanmax(np.abs(read[0] - wanted[0])) <= slope


def test_oblique_brain_and_its_float64_map_share_the_studys_frame_of_reference(pacs, tmp_path):
    image = load(OBLIQUE)
    body = imported(upload(pacs, read_bytes(OBLIQUE)))
    mr = series_of(body, "mr")
    three_readers(pacs, mr, tmp_path, expected(image), "dipy oblique brain")
    assert_positions_follow_the_affine(pacs, mr, image.affine)
    no_dciodvfy_errors(pacs, mr["instances"][0], tmp_path, "oblique.dcm")

    floats = load(OBLIQUE_FLOAT)
    added = imported(add_to_study(pacs, body["study"]["ID"], read_bytes(OBLIQUE_FLOAT)))
    assert added["frame_of_reference"] == {"uid": body["frame_of_reference"]["uid"], "from": "the study's"}
    dicom = pacs.get(f"/instances/{series_of(added, 'parametric-map')['instances'][0]}/file").content
    assert "DoubleFloatPixelData" in parse(dicom)
    assert_same_volume(by_highdicom(dicom), canonical(np.asanyarray(floats.dataobj), floats.affine), "float64 map")


def test_big_endian_las_int16(pacs, tmp_path):
    image = load(BIG_ENDIAN_LAS)
    assert image.header.endianness == ">" and nibabel.aff2axcodes(image.affine) == ("L", "A", "S")
    mr = series_of(imported(upload(pacs, read_bytes(BIG_ENDIAN_LAS))), "mr")
    three_readers(pacs, mr, tmp_path, expected(image), "nibabel anatomical.nii")
    assert_positions_follow_the_affine(pacs, mr, image.affine)


def test_scaled_int16_keeps_its_rescale_when_the_values_are_integers(pacs, tmp_path):
    source = load(BIG_ENDIAN_LAS)
    raw = np.asanyarray(source.dataobj).astype(np.int16)
    scaled = nibabel.Nifti1Image(raw, source.affine)
    mr = series_of(imported(upload(pacs, with_scaling(scaled, 2.0, -10.0))), "mr")
    tags = pacs.get(f"/instances/{mr['instances'][0]}/simplified-tags").json()
    assert (float(tags["RescaleSlope"]), float(tags["RescaleIntercept"])) == (2.0, -10.0)
    three_readers(pacs, mr, tmp_path, expected(scaled, raw * 2.0 - 10.0), "scaled int16")

    body = imported(upload(pacs, with_scaling(scaled, 0.5, 0.25)))
    assert [s["kind"] for s in body["series"]] == ["parametric-map", "companion"]
    dicom = pacs.get(f"/instances/{series_of(body, 'parametric-map')['instances'][0]}/file").content
    assert_same_volume(by_highdicom(dicom), canonical(raw * 0.5 + 0.25, source.affine), "fractionally scaled int16")


def test_4d_is_refused_unless_asked_then_one_series_per_volume(pacs, tmp_path):
    image = load(FOUR_D)
    before = pacs.instances()
    refused = upload(pacs, read_bytes(FOUR_D))
    assert refused.status_code == 400 and "dim[4]" in refused.json()["error"]
    assert refused.json()["success"] is False and pacs.instances() == before
    body = imported(upload(pacs, read_bytes(FOUR_D), **{"X-NeuroNova-Nifti-Volumes": "separate"}))
    assert len(body["series"]) == image.shape[3]
    assert len({s["SeriesInstanceUID"] for s in body["series"]}) == image.shape[3]
    for t, series in enumerate(body["series"]):
        assert_same_volume(by_simpleitk(write_series(pacs, series["instances"], str(tmp_path / f"v{t}"))[0]
                                        .rsplit("/", 1)[0]),
                           canonical(np.asanyarray(image.dataobj)[..., t].astype(np.float64), image.affine),
                           f"volume {t}")


def _sheared() -> bytes:
    return read_bytes(SHEARED)


def _label_map_without_source() -> bytes:
    labels = nibabel.Nifti1Image(np.ones((4, 4, 3), dtype=np.uint8), np.diag([2.0, 2.0, 2.0, 1.0]))
    labels.header.set_intent("label")
    return nifti_bytes(labels)


def _too_wide() -> bytes:
    return nifti_bytes(nibabel.Nifti1Image(np.zeros((300, 2, 2), dtype=np.int16), np.eye(4)))


def _no_world_coordinates() -> bytes:
    data = bytearray(nifti_bytes(nibabel.Nifti1Image(np.zeros((4, 4, 4), dtype=np.int16), np.eye(4))))
    struct.pack_into("<hh", data, 252, 0, 0)  # qform_code, sform_code: unknown
    return bytes(data)


REFUSALS = [
    ("sheared affine", _sheared, "sheared"),
    ("sform and qform apart", lambda: read_bytes(FORM_CONFLICT), "sform and qform"),  # sent with "separate"
    ("truncated .nii.gz", lambda: read_bytes(MNI_T1)[:100000], "truncated"),
    ("truncated .nii", lambda: read_bytes(BIG_ENDIAN_LAS)[:20000], "truncated NIfTI"),
    ("label map in a new study", _label_map_without_source, "no source series"),
    ("over MaxDimension", _too_wide, "NeuroNova.Nifti.MaxDimension"),
    ("no sform, no qform", _no_world_coordinates, "no world coordinates"),
]


@pytest.mark.parametrize(("what", "body", "says"), REFUSALS, ids=[r[0] for r in REFUSALS])
def test_refusals_name_the_cause_and_store_nothing(pacs, what, body, says):
    before = pacs.instances()
    answer = upload(pacs, body(), **{"X-NeuroNova-Nifti-Volumes": "separate"})  # 4-D allowed: the other rules
    assert answer.status_code == 400, answer.text
    assert answer.json()["success"] is False and says in answer.json()["error"], answer.json()
    assert pacs.instances() == before
    assert pacs.alive()


def test_refusals_of_the_study_route(pacs):
    study = imported(upload(pacs, read_bytes(OBLIQUE)))["study"]
    before = pacs.instances()
    no_patient = pacs.post("/neuronova/upload", data=read_bytes(OBLIQUE), headers=NIFTI)
    assert no_patient.status_code == 400 and "carries no patient" in no_patient.json()["error"]
    not_nifti = add_to_study(pacs, study["ID"], b"hello, not a volume")
    assert not_nifti.status_code == 400 and "not a NIfTI file" in not_nifti.json()["error"]
    unknown = add_to_study(pacs, "1.2.3.4.5", read_bytes(OBLIQUE))
    assert unknown.status_code == 404 and "not stored" in unknown.json()["error"]
    # labels on a grid no series of the study has: nothing to reference
    no_source = add_to_study(pacs, study["ID"], _label_map_without_source())
    assert no_source.status_code == 400 and "no source series" in no_source.json()["error"]
    bad_option = add_to_study(pacs, study["ID"], read_bytes(OBLIQUE), **{"X-NeuroNova-Nifti-Volumes": "all"})
    assert bad_option.status_code == 400 and "x-neuronova-nifti-volumes" in bad_option.json()["error"]
    unknown_patient = upload(pacs, read_bytes(OBLIQUE), patient="P-9999-000000")
    assert unknown_patient.status_code == 404
    assert pacs.instances() == before
