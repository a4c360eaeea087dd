"""NIfTI voxel space to DICOM patient space, the part converters get wrong: which affine, refused
when it is ambiguous or sheared, RAS to LPS, and each slice's plane from the affine itself (never
from pixdim).

DICOM columns run along the first voxel axis (i), rows along the second (j), one slice per voxel
plane along the third (k): Image Orientation is the first two affine columns made unit, Pixel
Spacing their lengths (row spacing first), the slice spacing the third column's length, and the
Image Position of slice k the affine applied to voxel (0, 0, k)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import BadRequest

#: sform and qform may disagree by this much (mm, at any corner of the voxel grid) when both are set.
FORM_TOLERANCE_MM = 1e-3
#: Largest |cosine| between two voxel axes still taken as orthogonal (float32 affines round near 1e-7).
SHEAR_TOLERANCE = 1e-4
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])

# NIfTI xform codes: 0 unknown, 1 scanner anatomical, 2 aligned, 3 Talairach, 4 MNI 152, 5 other template.
SCANNER, ALIGNED, TALAIRACH, MNI152, TEMPLATE = 1, 2, 3, 4, 5
_CODE_NAMES = {1: "scanner", 2: "aligned", 3: "talairach", 4: "mni152", 5: "template"}

#: Lowest corners (RAS mm) of the template grids pipelines write with code "aligned" (nilearn's and
#: FSL's MNI 152 files, SPM's default bounding box): such a volume is in template space all the same.
_TEMPLATE_CORNERS = (
    (-98.0, -134.0, -72.0),  # ICBM 152 2009 (nilearn's MNI templates), 1 mm
    (-90.0, -126.0, -72.0),  # FSL MNI152 1 mm and 2 mm
    (-78.0, -112.0, -50.0),  # SPM default bounding box
    (-78.0, -112.0, -70.0),  # SPM12 default bounding box
)


class GeometryRefused(BadRequest):
    """The file's world coordinates cannot be turned into one DICOM patient space."""


@dataclass(frozen=True)
class Geometry:
    """One volume's planes in DICOM LPS (mm); `affine_lps` maps voxel (i, j, k, 1) to patient space."""

    affine_lps: np.ndarray
    shape: tuple[int, int, int]  # (i, j, k): columns, rows, slices
    form: str  # "sform" or "qform"
    space: str  # scanner, aligned, talairach, mni152, template

    @property
    def template(self) -> bool:
        return self.space in ("talairach", "mni152", "template")

    @property
    def orientation(self) -> list[float]:
        """Image Orientation (Patient): the row direction (along i), then the column direction (along j)."""
        axes = self.affine_lps[:3, :2] / np.linalg.norm(self.affine_lps[:3, :2], axis=0)
        return [float(value) for value in np.concatenate([axes[:, 0], axes[:, 1]])]

    @property
    def pixel_spacing(self) -> list[float]:
        """Pixel Spacing: between rows (the j axis), then between columns (the i axis)."""
        lengths = np.linalg.norm(self.affine_lps[:3, :3], axis=0)
        return [float(lengths[1]), float(lengths[0])]

    @property
    def slice_spacing(self) -> float:
        return float(np.linalg.norm(self.affine_lps[:3, 2]))

    def position(self, k: int) -> list[float]:
        """Image Position (Patient) of slice k: the centre of its first voxel."""
        return [float(value) for value in (self.affine_lps @ np.array([0.0, 0.0, float(k), 1.0]))[:3]]

    def positions(self) -> list[list[float]]:
        return [self.position(k) for k in range(self.shape[2])]


def corners(affine: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """World coordinates of the 8 corner voxel centres of a grid."""
    extent = [max(size - 1, 0) for size in shape[:3]]
    grid = np.array([[i, j, k, 1.0] for i in (0, extent[0]) for j in (0, extent[1]) for k in (0, extent[2])])
    return (affine @ grid.T).T[:, :3]


def choose_affine(header, shape: tuple[int, ...]) -> tuple[np.ndarray, str, int]:
    """(RAS affine, "sform" / "qform", its xform code): the sform when its code is set, else the qform,
    else refused; refused when both are set and disagree by more than FORM_TOLERANCE_MM."""
    sform, sform_code = header.get_sform(coded=True)
    qform, qform_code = header.get_qform(coded=True)
    if sform is None and qform is None:
        raise GeometryRefused("sform_code and qform_code: both 0, the file has no world coordinates "
                              "(pixdim alone does not say where the patient is)")
    if sform is not None and qform is not None:
        gap = float(np.max(np.linalg.norm(corners(sform, shape) - corners(qform, shape), axis=1)))
        if gap > FORM_TOLERANCE_MM:
            raise GeometryRefused(f"sform and qform: both set and {gap:.4g} mm apart at a corner of the volume "
                                  f"(more than {FORM_TOLERANCE_MM} mm): which one is right is not known")
    if sform is not None:
        return np.asarray(sform, dtype=np.float64), "sform", int(sform_code)
    return np.asarray(qform, dtype=np.float64), "qform", int(qform_code)


def volume_geometry(header, shape: tuple[int, int, int]) -> Geometry:
    """The DICOM geometry of one 3-D volume of this header; raises GeometryRefused."""
    affine, form, code = choose_affine(header, shape)
    axes = affine[:3, :3]
    lengths = np.linalg.norm(axes, axis=0)
    if not np.all(np.isfinite(affine)) or np.any(lengths == 0):
        raise GeometryRefused(f"{form}: the affine has a zero-length or non-finite voxel axis")
    units = axes / lengths
    cosines = np.abs(units.T @ units - np.eye(3))
    if cosines.max() > SHEAR_TOLERANCE:
        a, b = np.unravel_index(np.argmax(cosines), cosines.shape)
        angle = float(np.degrees(np.arccos(np.clip(units[:, a] @ units[:, b], -1.0, 1.0))))
        raise GeometryRefused(f"{form}: voxel axes {'ijk'[a]} and {'ijk'[b]} are {angle:.3f} degrees apart, not "
                              "90 (a sheared affine): DICOM image planes cannot carry it")
    space = _CODE_NAMES.get(code, "aligned")
    if space in ("scanner", "aligned") and _on_template_grid(affine, shape):
        space = "template"
    return Geometry(_RAS_TO_LPS @ affine, shape, form, space)


def _on_template_grid(affine: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Axis-aligned 1, 1.5, 2 or 3 mm voxels whose lowest corner is a known template's."""
    axes = affine[:3, :3]
    if np.count_nonzero(np.abs(axes) > 1e-6) != 3:
        return False
    if not all(any(abs(abs(value) - size) < 1e-3 for size in (1.0, 1.5, 2.0, 3.0)) for value in np.abs(axes).max(axis=0)):
        return False
    lowest = corners(affine, shape).min(axis=0)
    return any(np.allclose(lowest, corner, atol=0.51) for corner in _TEMPLATE_CORNERS)
