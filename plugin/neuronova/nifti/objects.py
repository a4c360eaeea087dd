"""The DICOM objects a NIfTI volume becomes. MR slices are plain pydicom datasets (one per plane);
the Parametric Map and the Segmentation are built by highdicom, given the planes computed here."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pydicom.valuerep import format_number_as_ds

from .geometry import Geometry
from .volumes import Volume

MANUFACTURER = "NeuroNova"
MODEL = "NeuroNova ingest NIfTI import"
SOFTWARE = "neuronova-nifti 1"
DEVICE_SERIAL = "neuronova-ingest"  # type 1 in Enhanced General Equipment: no scanner made these objects
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PATIENT = hd.CoordinateSystemNames.PATIENT


@dataclass(frozen=True)
class Study:
    """The patient and study every object of an import carries."""

    patient: dict[str, str]  # PatientID, PatientName, PatientBirthDate, PatientSex
    attributes: dict[str, str]  # StudyInstanceUID, StudyDate, StudyTime, StudyID, AccessionNumber, ...


@dataclass(frozen=True)
class SeriesSpec:
    number: int
    description: str
    frame_of_reference: str
    uid: str = ""

    def __post_init__(self):
        if not self.uid:
            object.__setattr__(self, "uid", generate_uid())


def _ds(values: list[float]) -> list[str]:
    return [format_number_as_ds(float(value)) for value in values]


def _window(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)] if values.dtype.kind == "f" else values
    if finite.size == 0:
        return 0.0, 1.0
    low, high = float(finite.min()), float(finite.max())
    return (low + high) / 2, max(high - low, 1e-6 if values.dtype.kind == "f" else 1.0)


def mr_slices(volume: Volume, geometry: Geometry, study: Study, series: SeriesSpec, derivation: str,
              now: datetime.datetime) -> list[Dataset]:
    """MR Image Storage, DERIVED\\SECONDARY, one instance per voxel plane along k."""
    pixels = volume.voxels
    center, width = _window(pixels.astype(np.float64) * volume.slope + volume.intercept)
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    slices = []
    for k in range(geometry.shape[2]):
        ds = Dataset()
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.ImageType = ["DERIVED", "SECONDARY", "OTHER"]  # MR images need a value 3
        ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        _common(ds, study, series, "MR", date, time)
        ds.ContentDate, ds.ContentTime = date, time
        ds.DerivationDescription = derivation[:1024]
        ds.ScanningSequence, ds.SequenceVariant = "RM", "NONE"  # research mode: a derived volume
        ds.ScanOptions = ds.MRAcquisitionType = ds.RepetitionTime = ds.EchoTime = ds.EchoTrainLength = None
        ds.SliceThickness = ds.SpacingBetweenSlices = format_number_as_ds(geometry.slice_spacing)
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = _ds(geometry.position(k))
        ds.ImageOrientationPatient = _ds(geometry.orientation)
        ds.PixelSpacing = _ds(geometry.pixel_spacing)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = geometry.shape[1], geometry.shape[0]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
        if (volume.slope, volume.intercept) != (1.0, 0.0):
            ds.RescaleSlope, ds.RescaleIntercept = format_number_as_ds(volume.slope), format_number_as_ds(volume.intercept)
            ds.RescaleType = "US"
        ds.WindowCenter, ds.WindowWidth = format_number_as_ds(center), format_number_as_ds(width)
        ds.BurnedInAnnotation = "NO"
        ds.LossyImageCompression = "00"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()
        slices.append(_with_meta(ds))
    return slices


def _common(ds: Dataset, study: Study, series: SeriesSpec, modality: str, date: str, time: str) -> None:
    for keyword, value in {**study.patient, **study.attributes}.items():
        setattr(ds, keyword, value)
    ds.Modality = modality
    ds.Manufacturer, ds.ManufacturerModelName, ds.SoftwareVersions = MANUFACTURER, MODEL, SOFTWARE
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = series.uid, series.number, series.description
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.Laterality = ds.PatientPosition = None  # type 2C: not known for a derived volume
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = series.frame_of_reference, ""


def _with_meta(ds: Dataset) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def _planes(geometry: Geometry):
    measures = hd.PixelMeasuresSequence(pixel_spacing=geometry.pixel_spacing, slice_thickness=geometry.slice_spacing,
                                        spacing_between_slices=geometry.slice_spacing)
    orientation = hd.PlaneOrientationSequence(_PATIENT, geometry.orientation)
    positions = [hd.PlanePositionSequence(_PATIENT, position) for position in geometry.positions()]
    return measures, orientation, positions


def _frames(voxels: np.ndarray) -> np.ndarray:
    """(frames, rows, columns) from (i, j, k): frame k, row j, column i."""
    return np.ascontiguousarray(voxels.transpose(2, 1, 0))


def _stand_in(study: Study, series: SeriesSpec, geometry: Geometry) -> Dataset:
    """The patient, study and frame of reference for highdicom, which copies them from a source image.
    A NIfTI map has no DICOM source: the references highdicom makes to it are removed afterwards."""
    ds = Dataset()
    for keyword, value in {**study.patient, **study.attributes}.items():
        setattr(ds, keyword, value)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.SeriesInstanceUID = MRImageStorage, generate_uid(), generate_uid()
    ds.FrameOfReferenceUID, ds.Modality = series.frame_of_reference, "MR"
    ds.Rows, ds.Columns = geometry.shape[1], geometry.shape[0]
    ds.ImagePositionPatient, ds.ImageOrientationPatient = geometry.position(0), geometry.orientation
    ds.PixelSpacing, ds.SliceThickness = geometry.pixel_spacing, geometry.slice_spacing
    ds.SpecificCharacterSet = "ISO_IR 192"
    return ds


def parametric_map(volume: Volume, geometry: Geometry, study: Study, series: SeriesSpec, description: str) -> Dataset:
    """Parametric Map with the exact float32 (Float Pixel Data) or float64 (Double Float) values."""
    values = volume.voxels
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
    center, width = _window(values)
    measures, orientation, positions = _planes(geometry)
    mapping = hd.pm.RealWorldValueMapping(lut_label="NIFTI", lut_explanation=description[:64] or "NIfTI values",
                                          unit=_UNITLESS, value_range=(low, high), slope=1.0, intercept=0.0)
    stand_in = _stand_in(study, series, geometry)
    pm = hd.pm.ParametricMap(
        [stand_in], _frames(values), series.uid, series.number, generate_uid(), 1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL, software_versions=SOFTWARE, device_serial_number=DEVICE_SERIAL,
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=center, window_width=width)],
        content_description=description[:64] or None, pixel_measures=measures, plane_orientation=orientation,
        plane_positions=positions, content_label="MAP")
    for keyword in ("SourceImageSequence", "ReferencedSeriesSequence"):
        if keyword in pm:
            delattr(pm, keyword)
    pm.Laterality = None  # type 2C (dciodvfy asks for it in a Parametric Map): not known for a derived volume
    return _finish_highdicom(pm, study, series)


def segmentation(volume: Volume, geometry: Geometry, study: Study, series: SeriesSpec, sources: list[Dataset],
                 labelmap: bool, description: str) -> Dataset:
    """Segmentation of the labels (one segment per label value), referencing its source series, in its
    Frame of Reference: BINARY (one bit per voxel and segment), or LABELMAP when asked for."""
    numbers = [int(value) for value in np.unique(volume.voxels) if value != 0]
    segments = [hd.seg.SegmentDescription(
        segment_number=index, segment_label=f"Label {value}", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
        for index, value in enumerate(numbers, start=1)]
    # Segment numbers are 1..N in label order: the voxels are renumbered to them, the label values kept as names.
    lookup = np.zeros(int(volume.voxels.max()) + 1, dtype=np.uint16)
    lookup[numbers] = np.arange(1, len(numbers) + 1, dtype=np.uint16)
    renumbered = lookup[volume.voxels]
    pixel_array = _frames(renumbered.astype(np.uint8 if len(numbers) < 256 else np.uint16))
    measures, orientation, positions = _planes(geometry)
    seg = hd.seg.Segmentation(
        sources, pixel_array, hd.seg.SegmentationTypeValues.LABELMAP if labelmap else hd.seg.SegmentationTypeValues.BINARY,
        segments, series.uid, series.number, generate_uid(), 1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MODEL, software_versions=SOFTWARE, device_serial_number=DEVICE_SERIAL,
        content_description=description[:64] or None, pixel_measures=measures, plane_orientation=orientation,
        plane_positions=positions, omit_empty_frames=False, content_label="LABELS")
    return _finish_highdicom(seg, study, series)


def _finish_highdicom(ds: Dataset, study: Study, series: SeriesSpec) -> Dataset:
    """Study attributes highdicom does not copy, and the series description."""
    for keyword in ("StudyDescription",):
        if study.attributes.get(keyword):
            setattr(ds, keyword, study.attributes[keyword])
    ds.SeriesDescription = series.description
    return ds
