"""What a NIfTI file holds, and so which DICOM object it becomes: integer images (MR slices), float
maps (Parametric Map) or label maps (Segmentation). Values are checked, never cast silently."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadRequest

IMAGE, MAP, LABELS = "image", "map", "labels"
NIFTI_INTENT_LABEL = 1002
_INT16, _UINT16 = np.iinfo(np.int16), np.iinfo(np.uint16)
MAX_LABEL = 65535


@dataclass(frozen=True)
class Volume:
    """One 3-D volume, indexed (i, j, k), ready for its object: int16/uint16 pixels with the rescale
    that gives the file's values (image), exact float32/float64 values (map), or uint16 labels."""

    kind: str
    voxels: np.ndarray
    slope: float = 1.0
    intercept: float = 0.0


def split_volumes(image, separate_volumes: bool) -> list[np.ndarray]:
    """The file's 3-D volumes (raw stored values, native byte order): 4-D only when asked for."""
    raw = np.asanyarray(image.dataobj.get_unscaled())
    raw = raw.astype(raw.dtype.newbyteorder("="), copy=False)
    shape = raw.shape
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) > 4:
        raise BadRequest(f"dim: {len(shape)}-D data ({'x'.join(map(str, raw.shape))}): only 3-D volumes, or 4-D "
                         "series of them, can be imported")
    raw = raw.reshape(shape + (1,) * (3 - len(shape)) if len(shape) < 3 else shape)
    if raw.ndim == 3:
        return [raw]
    if not separate_volumes:
        raise BadRequest(f"dim[4]: a 4-D file with {raw.shape[3]} volumes: refused unless asked for "
                         "(X-NeuroNova-Nifti-Volumes: separate, one series per volume)")
    return [raw[..., t] for t in range(raw.shape[3])]


def scaling(image) -> tuple[float, float]:
    """scl_slope / scl_inter as NIfTI reads them (0 or not-a-number slope: none); nibabel keeps them with
    the voxels, not in the image's header."""
    return float(image.dataobj.slope), float(image.dataobj.inter)


def classify(raw: np.ndarray, header, as_labels: bool, slope: float = 1.0, intercept: float = 0.0) -> Volume:
    """The Volume for one 3-D raw array of this header; raises BadRequest naming the rule broken."""
    dtype = header.get_data_dtype()
    if raw.dtype.kind not in "uif":
        raise BadRequest(f"datatype: {dtype} voxels cannot be imported (integer or real scalars only)")
    scaled = (slope, intercept) != (1.0, 0.0)
    labels = as_labels or int(header["intent_code"]) == NIFTI_INTENT_LABEL
    if labels:
        return _labels(raw, slope, intercept, scaled)
    if raw.dtype.kind in "ui":
        if not scaled:
            return Volume(IMAGE, _to_16_bits(raw, str(dtype)))
        values = raw.astype(np.float64) * slope + intercept
        if np.array_equal(values, np.round(values)):  # scaled values are integers: the rescale is kept
            return Volume(IMAGE, _to_16_bits(raw, str(dtype)), slope, intercept)
        return Volume(MAP, _exact_float(values, np.float32 if raw.dtype.itemsize <= 2 else np.float64))
    if raw.dtype.itemsize > 8:
        raise BadRequest(f"datatype: {dtype} (more than 64-bit floats) cannot be stored exactly in DICOM")
    if not scaled:
        return Volume(MAP, raw)
    return Volume(MAP, _exact_float(raw.astype(np.float64) * slope + intercept, raw.dtype))


def _to_16_bits(raw: np.ndarray, datatype: str) -> np.ndarray:
    """int8 / int16 / uint8 / uint16 voxels as 16-bit pixels; wider types only when every value fits."""
    if raw.dtype in (np.int8, np.int16):
        return raw.astype(np.int16)
    if raw.dtype in (np.uint8, np.uint16):
        return raw.astype(np.uint16)
    low, high = (int(raw.min()), int(raw.max())) if raw.size else (0, 0)
    if _INT16.min <= low and high <= _INT16.max:
        return raw.astype(np.int16)
    if 0 <= low and high <= _UINT16.max:
        return raw.astype(np.uint16)
    raise BadRequest(f"datatype: {datatype} values {low}..{high} do not fit 16 bits, which MR images carry")


def _exact_float(values: np.ndarray, preferred) -> np.ndarray:
    """float32 when it holds every value exactly, else float64 (Double Float Pixel Data)."""
    narrow = values.astype(preferred)
    if np.dtype(preferred) == np.float64 or np.array_equal(narrow.astype(np.float64), values, equal_nan=True):
        return narrow
    return values.astype(np.float64)


def _labels(raw: np.ndarray, slope: float, intercept: float, scaled: bool) -> Volume:
    values = raw.astype(np.float64) * slope + intercept if scaled else raw
    if (raw.dtype.kind == "f" or scaled) and (
            not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values))):
        raise BadRequest("labels: a label map holds whole numbers; these voxels have fractions (a probability "
                         "map is imported as a float map, without the label option)")
    low, high = (values.min(), values.max()) if values.size else (0, 0)
    if low < 0 or high > MAX_LABEL:
        raise BadRequest(f"labels: values must be 0 (background) to {MAX_LABEL}, got {low:g}..{high:g}")
    labels = values.astype(np.uint16)
    if not labels.any():
        raise BadRequest("labels: every voxel is 0 (background): there is no segment to store")
    return Volume(LABELS, labels)
