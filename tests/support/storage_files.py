"""What the storage area left on disk, read the way an administrator would: Orthanc's ab/cd/uuid
layout under StorageDirectory, with each file either plain (the received bytes) or a container."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from io import BytesIO

import pydicom
from pydicom.uid import generate_uid

from neuronova.storage import container

from .dicom_files import read_bytes

HEX = frozenset("0123456789abcdef")


def _hex_dirs(folder: str) -> list[str]:
    try:
        return sorted(entry.name for entry in os.scandir(folder)
                      if entry.is_dir() and len(entry.name) == 2 and set(entry.name) <= HEX)
    except FileNotFoundError:
        return []


@dataclass
class StorageScan:
    """Every file of the storage folder's ab/cd/ layout: attachments by uuid, and leftovers."""

    attachments: dict[str, str] = field(default_factory=dict)  # uuid -> path
    temporaries: list[str] = field(default_factory=list)  # *.tmp written aside, never renamed into place
    others: list[str] = field(default_factory=list)  # anything else found in the layout folders


def scan_storage(root: str) -> StorageScan:
    scan = StorageScan()
    for first in _hex_dirs(root):
        for second in _hex_dirs(os.path.join(root, first)):
            folder = os.path.join(root, first, second)
            for entry in os.scandir(folder):
                if entry.name.endswith(".tmp"):
                    scan.temporaries.append(entry.path)
                elif entry.is_file() and entry.name.startswith(first + second):
                    scan.attachments[entry.name] = entry.path
                else:
                    scan.others.append(entry.path)
    return scan


def read_file(path: str) -> bytes:
    with open(path, "rb") as stored:
        return stored.read()


def attachment_path(root: str, uuid: str) -> str:
    return os.path.join(root, uuid[0:2], uuid[2:4], uuid)


def received_bytes(stored: bytes) -> bytes:
    """What a read of the storage area answers for this file: restored if a container (raises
    container.ContainerError if it does not restore), else the file itself."""
    return container.restore(stored) if container.is_container(stored) else stored


def fresh_copies(count: int, bases: tuple[str, ...] = ("CT_small.dcm",), study_uid: str | None = None
                 ) -> list[tuple[str, bytes]]:
    """(SOP Instance UID, Part-10 bytes) of `count` real files (pydicom-data) with new UIDs, one series
    per base file; every file distinct, so each is one instance in Orthanc."""
    study_uid = study_uid or generate_uid()
    templates = {base: pydicom.dcmread(BytesIO(read_bytes(base))) for base in bases}
    series = {base: generate_uid() for base in bases}
    out = []
    for index in range(count):
        base = bases[index % len(bases)]
        dataset = templates[base]
        sop = generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series[base]
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = sop
        dataset.InstanceNumber = index + 1
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        out.append((sop, buffer.getvalue()))
    return out


def sop_of(dicom: bytes) -> str:
    return str(pydicom.dcmread(BytesIO(dicom), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
               .SOPInstanceUID)
