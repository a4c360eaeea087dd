"""The NIfTI import's geometry, value policy, reading and all-or-nothing storing, as plain Python
(synthetic volumes whose right answer is known by construction; the real files are in the integration test)."""

from __future__ import annotations

import gzip

import nibabel
import numpy as np
import pytest
from neuronova.config import load_settings
from neuronova.errors import BadRequest, ConfigError, PayloadTooLarge, StoreRejected
from neuronova.nifti.geometry import GeometryRefused, volume_geometry
from neuronova.nifti.reading import NiftiLimits, NotNifti, looks_like_nifti, read_nifti
from neuronova.nifti.service import ImportOptions, NiftiImport, NiftiSettings
from neuronova.nifti.volumes import IMAGE, LABELS, MAP, classify, split_volumes

LIMITS = NiftiLimits(max_dimension=512, max_voxels=10**7, max_inflated_bytes=10**8)


def image(data, affine=None, sform_code=1, qform=None) -> nibabel.Nifti1Image:
    img = nibabel.Nifti1Image(data, np.eye(4) if affine is None else affine)
    img.header.set_sform(img.affine, code=sform_code)
    if qform is not None:
        img.header.set_qform(qform, code=1)
    else:
        img.header.set_qform(None, code=0)
    return img


def oblique_affine() -> np.ndarray:
    angle = np.radians(20)
    rotation = np.array([[1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-50.0, 20.0, 10.0]
    return affine


def test_planes_follow_the_affine_in_lps():
    affine = oblique_affine()
    geometry = volume_geometry(image(np.zeros((4, 5, 6), np.int16), affine).header, (4, 5, 6))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    assert np.allclose(geometry.orientation[:3], lps[:3, 0] / 0.8)
    assert np.allclose(geometry.orientation[3:], lps[:3, 1] / 0.9)
    assert np.allclose(geometry.pixel_spacing, [0.9, 0.8]) and np.isclose(geometry.slice_spacing, 2.5)
    for k in range(6):
        assert np.allclose(geometry.position(k), (lps @ [0, 0, k, 1])[:3])
    assert geometry.form == "sform" and geometry.space == "scanner" and not geometry.template


def test_pixdim_is_not_the_spacing():
    img = image(np.zeros((3, 3, 3), np.int16), np.diag([2.0, 3.0, 4.0, 1.0]))
    img.header["pixdim"][1:4] = [9.0, 9.0, 9.0]  # a header that lies: the affine wins
    assert volume_geometry(img.header, (3, 3, 3)).pixel_spacing == [3.0, 2.0]


def test_shear_is_refused_naming_the_axes():
    affine = np.eye(4)
    affine[0, 2] = 0.5  # slices slanted along x
    with pytest.raises(GeometryRefused, match="voxel axes i and k .* sheared"):
        volume_geometry(image(np.zeros((3, 3, 3), np.int16), affine).header, (3, 3, 3))


def test_sform_wins_over_an_agreeing_qform_and_a_disagreeing_one_is_refused():
    affine = oblique_affine()
    agreeing = image(np.zeros((3, 3, 3), np.int16), affine, qform=affine)
    assert volume_geometry(agreeing.header, (3, 3, 3)).form == "sform"
    moved = affine.copy()
    moved[0, 3] += 0.01
    with pytest.raises(GeometryRefused, match=r"sform and qform: both set and 0\.0099\d* mm apart"):
        volume_geometry(image(np.zeros((3, 3, 3), np.int16), affine, qform=moved).header, (3, 3, 3))


def test_qform_alone_and_no_form_at_all():
    qform_only = image(np.zeros((3, 3, 3), np.int16), sform_code=0, qform=np.diag([2.0, 2.0, 2.0, 1.0]))
    assert volume_geometry(qform_only.header, (3, 3, 3)).form == "qform"
    neither = image(np.zeros((3, 3, 3), np.int16), sform_code=0)
    with pytest.raises(GeometryRefused, match="no world coordinates"):
        volume_geometry(neither.header, (3, 3, 3))


@pytest.mark.parametrize(("code", "affine", "template"), [
    (4, np.eye(4), True),  # MNI 152 code
    (3, np.eye(4), True),  # Talairach code
    (2, np.array([[1, 0, 0, -98], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1.0]]), True),  # the ICBM 2009 grid
    (2, np.array([[1, 0, 0, -97], [0, 1, 0, -134], [0, 0, 1, -72], [0, 0, 0, 1.0]]), False),
    (1, np.eye(4), False),
])
def test_template_space(code, affine, template):
    img = image(np.zeros((3, 3, 3), np.int16), affine, sform_code=code)
    assert volume_geometry(img.header, (3, 3, 3)).template is template


def raw_and_header(data, slope=1.0, intercept=0.0, intent=None):
    img = image(data)
    if intent:
        img.header.set_intent(intent)
    return data, img.header, slope, intercept


def test_integer_volumes_become_16_bit_images_exactly():
    for dtype, wanted in ((np.int8, np.int16), (np.uint8, np.uint16), (np.int16, np.int16), (np.uint16, np.uint16)):
        data = np.arange(24, dtype=dtype).reshape(2, 3, 4)
        raw, header, *_ = raw_and_header(data)
        volume = classify(raw, header, False)
        assert volume.kind == IMAGE and volume.voxels.dtype == wanted and np.array_equal(volume.voxels, data)
    wide = np.array([0, 70000], dtype=np.int32).reshape(1, 1, 2)
    with pytest.raises(BadRequest, match="int32 values 0..70000 do not fit 16 bits"):
        classify(*raw_and_header(wide)[:2], False)


def test_scaling_kept_when_the_values_are_integers_else_a_float_map():
    data = np.arange(8, dtype=np.int16).reshape(2, 2, 2)
    kept = classify(data, image(data).header, False, 2.0, -10.0)
    assert (kept.kind, kept.slope, kept.intercept) == (IMAGE, 2.0, -10.0) and np.array_equal(kept.voxels, data)
    fractional = classify(data, image(data).header, False, 0.5, 0.25)
    assert fractional.kind == MAP and fractional.voxels.dtype == np.float32
    assert np.array_equal(fractional.voxels, data * 0.5 + 0.25)


def test_float_data_is_never_cast():
    data = np.array([0.1, 1.0, np.nan, -3.5], dtype=np.float64).reshape(1, 2, 2)
    volume = classify(data, image(data).header, False)
    assert volume.kind == MAP and volume.voxels.dtype == np.float64
    assert np.array_equal(volume.voxels, data, equal_nan=True)


def test_label_maps():
    data = np.array([0, 1, 2, 7], dtype=np.uint8).reshape(1, 2, 2)
    assert classify(data, image(data).header, True).kind == LABELS
    by_intent = classify(*raw_and_header(data, intent="label")[:2], False)
    assert by_intent.kind == LABELS and np.array_equal(by_intent.voxels, data)
    fractions = np.array([0, 0.5, 1, 1], dtype=np.float32).reshape(1, 2, 2)
    with pytest.raises(BadRequest, match="whole numbers"):
        classify(fractions, image(fractions).header, True)
    with pytest.raises(BadRequest, match="every voxel is 0"):
        classify(np.zeros((2, 2, 2), np.uint8), image(np.zeros((2, 2, 2), np.uint8)).header, True)


def from_bytes(img):
    return nibabel.Nifti1Image.from_bytes(img.to_bytes())  # voxels behind an array proxy, as uploaded


def test_4d_only_when_asked():
    img = from_bytes(image(np.zeros((2, 2, 2, 3), np.int16)))
    with pytest.raises(BadRequest, match=r"dim\[4\]: a 4-D file with 3 volumes"):
        split_volumes(img, False)
    assert [v.shape for v in split_volumes(img, True)] == [(2, 2, 2)] * 3
    assert [v.shape for v in split_volumes(from_bytes(image(np.zeros((2, 2, 2, 1), np.int16))), False)] == [(2, 2, 2)]


def test_reading_by_content():
    data = image(np.arange(27, dtype=np.int16).reshape(3, 3, 3)).to_bytes()
    for body in (data, gzip.compress(data)):
        assert looks_like_nifti(body)
        assert np.array_equal(np.asanyarray(read_nifti(body, LIMITS).dataobj), np.arange(27).reshape(3, 3, 3))
    assert not looks_like_nifti(gzip.compress(b"DICM" * 200)) and not looks_like_nifti(b"\0" * 400)
    with pytest.raises(NotNifti, match="truncated .nii.gz"):
        read_nifti(gzip.compress(data)[:-12], LIMITS)
    with pytest.raises(NotNifti, match="truncated NIfTI"):
        read_nifti(data[:-2], LIMITS)
    pair = bytearray(data)
    pair[344:348] = b"ni1\0"
    with pytest.raises(NotNifti, match=".hdr/.img pair"):
        read_nifti(bytes(pair), LIMITS)


def test_limits_before_the_voxels():
    wide = image(np.zeros((600, 1, 1), np.uint8)).to_bytes()
    with pytest.raises(BadRequest, match=r"dim\[1\]: 600 voxels, over the limit of 512"):
        read_nifti(wide, LIMITS)
    big = image(np.zeros((400, 400, 100), np.uint8)).to_bytes()
    with pytest.raises(BadRequest, match="NeuroNova.Nifti.MaxVoxels"):
        read_nifti(big, LIMITS)
    with pytest.raises(PayloadTooLarge, match="MaxInflatedSizeMB"):
        read_nifti(gzip.compress(big), NiftiLimits(512, 10**8, 10**6))


def test_options_from_headers():
    options = ImportOptions.from_headers({"x-neuronova-nifti-volumes": "separate", "x-neuronova-nifti-content": "Labels",
                                          "x-neuronova-filename": "%ED%99%8D%20T1.nii.gz"})
    assert options.separate_volumes and options.labels and not options.labelmap and options.description == "홍 T1"
    with pytest.raises(BadRequest, match="x-neuronova-nifti-segmentation: must be binary or labelmap"):
        ImportOptions.from_headers({"x-neuronova-nifti-segmentation": "fractional"})


class _Pacs:
    def __init__(self):
        self.deleted = []

    def core_delete(self, uri):
        self.deleted.append(uri)


def test_a_failed_store_takes_back_what_was_stored():
    pacs, stored = _Pacs(), []

    def store(data, sop):
        if len(stored) == 2:
            raise StoreRejected("Orthanc refused to store the file (HTTP 500)")
        stored.append(sop)
        return {"ID": f"instance-{len(stored)}", "ParentSeries": "s", "ParentStudy": "t"}

    importer = NiftiImport(pacs, store, NiftiSettings())
    body = image(np.arange(24, dtype=np.int16).reshape(2, 3, 4)).to_bytes()  # 4 slices
    with pytest.raises(StoreRejected):
        importer.to_new_study(body, {"PatientID": "P-1", "PatientName": "A^B", "PatientBirthDate": "",
                                     "PatientSex": ""}, ImportOptions())
    assert pacs.deleted == ["/instances/instance-1", "/instances/instance-2"]


def test_configuration_keys():
    settings = load_settings({"NeuroNova": {"Nifti": {"FloatCompanion": True, "MaxDimension": 1024}}})
    assert settings.nifti.float_companion and settings.nifti.max_dimension == 1024
    assert not load_settings({}).nifti.float_companion
    with pytest.raises(ConfigError, match="NeuroNova.Nifti.MaxDimension"):
        load_settings({"NeuroNova": {"Nifti": {"MaxDimension": 0}}})
    with pytest.raises(ConfigError, match="NeuroNova.Nifti.Companion: unknown"):
        load_settings({"NeuroNova": {"Nifti": {"Companion": True}}})
