"""Instances that arrive already compressed as lossless HTJ2K: Orthanc's core cannot read them
(DCMTK knows no HTJ2K), so they are decoded to Explicit VR Little Endian before Orthanc parses
them, and the storage area keeps them as HTJ2K on disk again. Lossy (or possibly lossy) HTJ2K,
1.2.840.10008.1.2.4.203, is never decoded: stored as received.
"""

from __future__ import annotations

import logging
from io import BytesIO

import numpy as np
import pydicom
from pydicom.encaps import generate_fragmented_frames
from pydicom.uid import ExplicitVRLittleEndian

from .codec import htj2k

log = logging.getLogger("neuronova.storage")

LOSSLESS_HTJ2K = frozenset({"1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202"})


def decode_htj2k_arrival(dicom: bytes, syntax: str) -> bytes:
    """The instance (of this transfer syntax) decoded for Orthanc's core when it is lossless HTJ2K,
    else `dicom` itself."""
    if syntax not in LOSSLESS_HTJ2K:
        return dicom
    dataset = pydicom.dcmread(BytesIO(dicom))
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    decoded = []
    for fragments in generate_fragmented_frames(dataset.PixelData, number_of_frames=frames):
        frame = htj2k.decode(b"".join(fragments))
        decoded.append(frame.astype(f"<{'i' if dataset.PixelRepresentation else 'u'}{dataset.BitsAllocated // 8}",
                                    copy=False))
    pixels = np.stack(decoded).tobytes()
    dataset.PixelData = pixels + b"\x00" * (len(pixels) & 1)
    dataset["PixelData"].VR = "OB" if dataset.BitsAllocated <= 8 else "OW"
    dataset["PixelData"].is_undefined_length = False
    if dataset.get("PhotometricInterpretation") in ("YBR_RCT", "YBR_ICT"):
        dataset.PhotometricInterpretation = "RGB"  # the decoder undid the colour transform
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        dataset.PlanarConfiguration = 0
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    log.info("SOP Instance %s arrived as HTJ2K (%s): decoded for Orthanc's core", dataset.get("SOPInstanceUID", "?"),
             syntax)
    return out.getvalue()
