"""Reading an uploaded NIfTI-1 / NIfTI-2 file (plain or gzip), told by content, not by name; the
whole file is checked before anything is built (size limits from the header, before the voxels)."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

import nibabel
import numpy as np
from nibabel.filebasedimages import ImageFileError
from nibabel.spatialimages import HeaderDataError

from ..errors import BadRequest, PayloadTooLarge

GZIP_MAGIC = b"\x1f\x8b"
_NIFTI1_SIZE, _NIFTI2_SIZE = 348, 540
#: What nibabel raises for a malformed header or voxel block.
_NIBABEL_ERRORS = (HeaderDataError, ImageFileError, ValueError, TypeError, EOFError, OSError, struct.error)


class NotNifti(BadRequest):
    """The body is not a readable single-file NIfTI volume."""


@dataclass(frozen=True)
class NiftiLimits:
    max_dimension: int  # voxels along any one axis
    max_voxels: int  # over all volumes of the file
    max_inflated_bytes: int  # a .nii.gz once inflated


def _header_kind(data: bytes) -> str | None:
    """"nifti1" or "nifti2" when the bytes start like a NIfTI header (either byte order), else None."""
    if len(data) < 4:
        return None
    for order in "<>":
        (size,) = struct.unpack(order + "i", data[:4])
        if size == _NIFTI1_SIZE and len(data) >= _NIFTI1_SIZE and data[344:347] in (b"n+1", b"ni1"):
            return "nifti1"
        if size == _NIFTI2_SIZE and len(data) >= _NIFTI2_SIZE and data[4:7] in (b"n+2", b"ni2"):
            return "nifti2"
    return None


def looks_like_nifti(body: bytes) -> bool:
    """A NIfTI header, or gzip whose first inflated bytes are one (a gzip of anything else is not ours)."""
    if body.startswith(GZIP_MAGIC):
        try:
            head = zlib.decompressobj(wbits=31).decompress(body[:65536], _NIFTI2_SIZE)
        except zlib.error:
            return False
        return _header_kind(head) is not None
    return _header_kind(body) is not None


def inflate(body: bytes, limit: int) -> bytes:
    """The inflated bytes of a gzip body (every member), refusing a truncated one or one beyond `limit`."""
    parts, size, rest = [], 0, body
    while rest:
        inflater = zlib.decompressobj(wbits=31)
        try:
            part = inflater.decompress(rest, limit - size + 1)
        except zlib.error as error:
            raise NotNifti(f"corrupt gzip data: {error}") from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(f"the .nii.gz inflates beyond {limit} bytes (NeuroNova.Nifti.MaxInflatedSizeMB)")
        if not inflater.eof:
            raise NotNifti(f"truncated .nii.gz: the gzip stream ends after {len(body)} bytes, before its end marker")
        parts.append(part)
        rest = inflater.unused_data
    return b"".join(parts)


def read_nifti(body: bytes, limits: NiftiLimits) -> nibabel.Nifti1Image:
    """The image, its voxels checked to be all there; raises NotNifti / PayloadTooLarge naming the cause."""
    data = inflate(body, limits.max_inflated_bytes) if body.startswith(GZIP_MAGIC) else body
    kind = _header_kind(data)
    if kind is None:
        raise NotNifti("not a NIfTI file: no NIfTI-1 or NIfTI-2 header (sizeof_hdr 348 or 540 and its magic)")
    image_class = nibabel.Nifti1Image if kind == "nifti1" else nibabel.Nifti2Image
    header_size = _NIFTI1_SIZE if kind == "nifti1" else _NIFTI2_SIZE
    try:
        header = image_class.header_class.from_fileobj(_Reader(data))
    except _NIBABEL_ERRORS as error:
        raise NotNifti(f"unreadable NIfTI header: {error}") from None
    if header["magic"].tobytes()[:3] in (b"ni1", b"ni2"):
        raise NotNifti("a NIfTI header of a .hdr/.img pair (magic 'ni1'): upload the single-file .nii form")
    shape = header.get_data_shape()
    if not shape or any(size < 1 for size in shape):
        raise NotNifti(f"dim: every dimension must be 1 or more, got {shape}")
    _check_limits(shape, limits)
    try:
        dtype = header.get_data_dtype()
    except _NIBABEL_ERRORS as error:
        raise NotNifti(f"datatype: {error}") from None
    offset = int(header.get_data_offset()) or header_size
    needed = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) < needed:
        raise NotNifti(f"truncated NIfTI: the header promises {needed - offset} bytes of voxels at offset "
                       f"{offset}, the file ends at {len(data)} bytes")
    try:
        return image_class.from_bytes(data)
    except _NIBABEL_ERRORS as error:
        raise NotNifti(f"unreadable NIfTI file: {error}") from None


def _check_limits(shape: tuple[int, ...], limits: NiftiLimits) -> None:
    for axis, size in enumerate(shape):
        if size > limits.max_dimension:
            raise BadRequest(f"dim[{axis + 1}]: {size} voxels, over the limit of {limits.max_dimension} "
                             "(NeuroNova.Nifti.MaxDimension)")
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > limits.max_voxels:
        raise BadRequest(f"dim: {'x'.join(map(str, shape))} = {voxels} voxels, over the limit of "
                         f"{limits.max_voxels} (NeuroNova.Nifti.MaxVoxels)")


class _Reader:
    """The smallest file object nibabel's header reader needs."""

    def __init__(self, data: bytes):
        self.data, self.offset = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else self.offset + size
        chunk = self.data[self.offset:end]
        self.offset += len(chunk)
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        self.offset = offset if whence == 0 else (self.offset + offset if whence == 1 else len(self.data) + offset)
        return self.offset

    def tell(self) -> int:
        return self.offset
