"""WADO-RS Retrieve Frames for every instance:
``GET {DicomWeb.Root}studies/{study}/series/{series}/instances/{sop}/frames/{frame list}``
(and ``.../frames`` for every frame).

What only the plugin can do: answer the frames of an instance the storage area keeps as HTJ2K with
the stored codestreams, untouched, when the client accepts HTJ2K (``transfer-syntax=*``,
``1.2.840.10008.1.2.4.201``, ``type="image/jphc"``, or ``*/*``): what web viewers stream. Colour
is kept with the reversible colour transform (the container says YBR_RCT) and answered so, while
clients read the instance from Orthanc as received (RGB): the codestream declares its transform
(COD), which decoders undo, and Cornerstone shows it exactly; labelled YBR_RCT it would clamp
16-bit colour to 8 bits, and colour without the transform it decodes wrongly (OHIF 3.13.2, README).
The Python plugin is loaded first, so its route on this URI wins over the DICOMweb plugin's for every instance
(a plugin cannot hand a request back), and every other request is answered as the DICOMweb plugin
1.7 answers it, from the received file that Orthanc's core reads. The rest of DICOMweb (metadata,
instances, rendered, QIDO-RS, STOW-RS) is the DICOMweb plugin's.

Answers, as the DICOMweb plugin 1.7 gives them (PS3.18 8.7.3.5 content negotiation):

* ``multipart/related``, one part per requested frame, in the order asked, each with
  ``Content-Location`` (``DicomWeb.Host`` / ``Ssl``, else the ``Forwarded`` or ``Host`` header),
  ``Content-Type`` (with ``transfer-syntax``), ``Content-Length`` and ``MIME-Version``;
* ``type="application/octet-stream"`` (the default; also ``*/*`` or no Accept) without
  transfer syntax or with ``1.2.840.10008.1.2.1``: uncompressed little-endian pixels
  (``1.2.840.10008.1.2``: the same bytes under that label). Compressed frames are decoded by the
  plugin's own decoders (uncompressed.py, the code of the uncompressed download); only a
  grayscale frame they refuse (12-bit lossy JPEG) is decoded by Orthanc's core image routes;
* ``transfer-syntax=*``: the stored frame as it is (Orthanc's ``/instances/{id}/frames/{n}/raw``),
  labelled with the media type of its transfer syntax (``image/jp2``, ``image/jls``,
  ``image/jpeg``, ``image/dicom-rle``...) as the DICOMweb plugin labels it; HTJ2K as
  ``application/octet-stream; transfer-syntax=1.2.840.10008.1.2.4.201`` (the type asked for);
* the stored transfer syntax asked by name (``type="application/octet-stream"`` or the media
  type of that syntax, e.g. ``type="image/jphc"``): the stored frame, untouched;
* the DICOMweb plugin's media types, 2014 names included (``image/x-jls``,
  ``image/dicom+jpeg``...), each with its default transfer syntax when none is given.

Deliberate differences from the DICOMweb plugin 1.7, which answers these by transcoding with
Orthanc's transcoder (GDCM 1.5 / DCMTK 3.6.7): a compressed transfer syntax other than the stored
one answers 406 Not Acceptable. That transcoder killed the Orthanc process here (measured) for
JPEG-LS targets, JPEG 2000 of small RGB images, JPEG 2000 Part 2 of RGB, RLE, and at random for
others on an HTTP thread's stack; the plugin never calls it. Also: an Accept with several media
ranges is negotiated (by ``q``, then order) instead of answering 400; an Accept without any
``multipart/related`` range answers 406 (the plugin: 400); ``.../frames`` answers every frame
(the plugin 1.7 leaves out the first and breaks off); a big-endian or deflated instance asked
``transfer-syntax=*`` answers its little-endian frames (the plugin: 500); no pixel data answers
400 (the plugin: 500). Statuses otherwise as the plugin's: 404 for an unknown instance or one
outside the study / series, 400 for a malformed or out-of-range frame number, 405 for a method
other than GET.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass

import imagecodecs
import numpy as np
from pydicom import Dataset
from pydicom.datadict import tag_for_keyword
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)

from ..config import DicomWebSettings
from ..errors import BadRequest, NeuroNovaError, NotFound
from ..http import Request, Response, allow
from ..pacs import Pacs
from .frame_decoding import DECODERS, HTJ2K_SYNTAXES, PIXEL_KEYWORDS, CannotDecode, frame_to_little_endian
from .frame_encoding import ENCODERS, encode_frame

OCTET_STREAM = "application/octet-stream"
# Orthanc hands the frames of these over little endian (/frames/{n}/raw): nothing to decode
UNCOMPRESSED = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian,
                          DeflatedExplicitVRLittleEndian})
DECODABLE = frozenset(DECODERS) | {RLELossless}
# Decodable without loss: the frames they give may be encoded again in another lossless syntax
LOSSLESS_DECODABLE = DECODABLE & {"1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                                  "1.2.840.10008.1.2.4.90", RLELossless, *HTJ2K_SYNTAXES} - {"1.2.840.10008.1.2.4.203"}

_JPEG = ("1.2.840.10008.1.2.4.70", ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",
                                    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70"))
_RLE = (RLELossless, (RLELossless,))
_JLS = ("1.2.840.10008.1.2.4.80", ("1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"))
_JP2 = ("1.2.840.10008.1.2.4.90", ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91"))
_JPX = ("1.2.840.10008.1.2.4.92", ("1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"))
_JPHC = ("1.2.840.10008.1.2.4.201", ("1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
                                     "1.2.840.10008.1.2.4.203"))
# Part media type asked -> (transfer syntax when none is given, transfer syntaxes it carries):
# the DICOMweb plugin 1.7's table (DICOM 2021a names, the 2017c and 2014a ones), plus HTJ2K.
MEDIA_TYPES = {
    "image/jpeg": _JPEG, "image/dicom+jpeg": _JPEG,
    "image/dicom-rle": _RLE, "image/x-dicom-rle": _RLE, "image/dicom+rle": _RLE,
    "image/jls": _JLS, "image/x-jls": _JLS, "image/dicom+jpeg-ls": _JLS,
    "image/jp2": _JP2, "image/dicom+jp2": _JP2,
    "image/jpx": _JPX, "image/dicom+jpx": _JPX,
    "image/jphc": _JPHC,
}
# Transfer syntax -> the media type its frames are labelled with (the DICOMweb plugin's names)
LABELS = {
    ImplicitVRLittleEndian: OCTET_STREAM, ExplicitVRLittleEndian: OCTET_STREAM,
    **{syntax: "image/jpeg" for syntax in _JPEG[1]}, RLELossless: "image/dicom-rle",
    **{syntax: "image/jls" for syntax in _JLS[1]}, **{syntax: "image/jp2" for syntax in _JP2[1]},
    **{syntax: "image/jpx" for syntax in _JPX[1]}, **{syntax: "image/jphc" for syntax in _JPHC[1]},
}
_FRAME_NUMBER = re.compile(r"[+-]?[0-9]+")


class NotAcceptable(NeuroNovaError):
    """None of the media ranges of the Accept header can be answered for this instance (406)."""

    http_status = 406


@dataclass(frozen=True)
class MediaRange:
    """One ``multipart/related`` range of an Accept header: the part type and transfer syntax asked."""

    media_type: str = OCTET_STREAM
    syntax: str = ""  # "" (none given), "*" or a transfer syntax UID
    quality: float = 1.0
    anything: bool = False  # */*: the client takes whatever comes

    def accepts_htj2k(self, syntax: str) -> bool:
        if self.anything or self.syntax in ("*", syntax):
            return self.media_type in (OCTET_STREAM, "image/jphc")
        return self.media_type == "image/jphc" and not self.syntax


@dataclass(frozen=True)
class Choice:
    """How the frames are answered."""

    content_type: str  # of each part, transfer syntax included
    decode: bool  # uncompressed little-endian pixels; False: the received frames as they are
    kept: bool = False  # the codestreams the storage area keeps, untouched
    encode: str = ""  # a lossless syntax the uncompressed frames are encoded to (frame_encoding)


def label(media_type: str, syntax: str) -> str:
    return f"{media_type}; transfer-syntax={syntax}"


# ---------------------------------------------------------------------------
# Request parsing


def parse_accept(header: str | None) -> list[MediaRange]:
    """The acceptable ranges, best first (``q``, then order); ranges other than multipart are dropped.

    Parameter values are lower-cased and unquoted on each side on their own, so that both
    ``type="image/jphc"`` and the nested ``type="application/octet-stream; transfer-syntax=*"``
    read as meant. A parameter without ``=`` is a 400, as for the DICOMweb plugin.
    """
    if header is None or not header.strip():
        return [MediaRange()]
    ranges = []
    for item in header.split(","):
        tokens = [token.strip() for token in item.split(";")]
        kind = tokens[0].lower()
        parameters = {}
        for token in tokens[1:]:
            if not token:
                continue
            key, equals, value = token.partition("=")
            if not equals:
                raise BadRequest(f"Accept: malformed parameter {token!r} in {item.strip()!r}")
            parameters[key.strip().lower()] = value.strip().strip('"').strip().lower()
        try:
            quality = float(parameters.get("q", "1"))
        except ValueError:
            raise BadRequest(f"Accept: malformed quality {parameters['q']!r} in {item.strip()!r}") from None
        if quality <= 0:
            continue
        if kind == "*/*":
            ranges.append(MediaRange(quality=min(quality, 1.0), anything=True))
        elif kind in ("multipart/related", "multipart/*"):
            ranges.append(MediaRange(parameters.get("type") or OCTET_STREAM, parameters.get("transfer-syntax", ""),
                                     min(quality, 1.0)))
    return sorted(ranges, key=lambda media_range: -media_range.quality)


def parse_frame_list(text: str | None, plus_as_space: bool = False) -> list[int] | None:
    """Frame numbers from 1, in the order given (repeats kept); None for every frame.

    As the DICOMweb plugin: comma-separated (``%2C`` too), each an integer (sign allowed, no
    spaces), at least 1; anything else is a 400. ``plus_as_space``: Orthanc (1.12) hands a ``+`` of
    the URI over as a space, so a leading space is the sign.
    """
    if text is None or text == "":
        return None
    numbers = []
    for token in text.lower().replace("%2c", ",").split(","):
        if plus_as_space and token.startswith(" "):
            token = "+" + token[1:]
        # a 32-bit integer, as the DICOMweb plugin reads it; the length first (int() of 5000 digits raises)
        if len(token) > 12 or not _FRAME_NUMBER.fullmatch(token) or not -2 ** 31 <= int(token) < 2 ** 31:
            raise BadRequest(f"frame list: {token[:16]!r}{'...' if len(token) > 16 else ''} is not a frame number")
        if int(token) <= 0:
            raise BadRequest(f"Invalid frame number (must be > 0): {token}")
        numbers.append(int(token))
    return numbers


def check_frames(numbers: list[int] | None, count: int) -> list[int]:
    if count == 0:
        raise BadRequest("this instance has no pixel data: it has no frames")
    if numbers is None:
        return list(range(1, count + 1))
    for number in numbers:
        if number > count:
            raise BadRequest(f"frame {number} does not exist: the instance has {count} frame(s), numbered from 1")
    return numbers


# ---------------------------------------------------------------------------
# Negotiation


def resolve(media_range: MediaRange, stored: str) -> Choice | None:
    """The answer to one range for an instance stored in ``stored``, or None if it has none."""
    encapsulated = stored not in UNCOMPRESSED
    if media_range.media_type == OCTET_STREAM:
        if media_range.syntax in ("", ExplicitVRLittleEndian, ImplicitVRLittleEndian):
            if encapsulated and stored not in DECODABLE:
                return None
            return Choice(label(OCTET_STREAM, media_range.syntax or ExplicitVRLittleEndian), True)
        if media_range.syntax == "*":
            if stored in HTJ2K_SYNTAXES or (encapsulated and stored not in LABELS):
                return Choice(label(OCTET_STREAM, stored), False)
            if encapsulated:
                return Choice(label(LABELS[stored], stored), False)  # the DICOMweb plugin's label
            # Orthanc's raw frames of big-endian and deflated instances are little endian
            return Choice(label(OCTET_STREAM, stored if stored == ImplicitVRLittleEndian else ExplicitVRLittleEndian),
                          False)
        if media_range.syntax == stored and encapsulated:
            return Choice(label(OCTET_STREAM, stored), False)
        return None
    known = MEDIA_TYPES.get(media_range.media_type)
    if known is None:
        return None
    default, syntaxes = known
    wanted = stored if media_range.syntax == "*" else media_range.syntax or default
    if wanted == stored and stored in syntaxes:
        return Choice(label(LABELS[stored], stored), False)
    if wanted in syntaxes and wanted in ENCODERS and (stored in UNCOMPRESSED or stored in LOSSLESS_DECODABLE):
        return Choice(label(LABELS[wanted], wanted), True, encode=wanted)
    return None


def choices(ranges: list[MediaRange], stored: str, kept_as: str | None = None) -> list[Choice]:
    """Every answer the Accept header allows, best first; 406 if there is none. ``kept_as``: the
    syntax of the codestreams the storage area keeps (HTJ2K), answered untouched where accepted."""
    found = []
    for media_range in ranges:
        if kept_as and media_range.accepts_htj2k(kept_as):
            media_type = "image/jphc" if media_range.media_type == "image/jphc" else OCTET_STREAM
            found.append(Choice(label(media_type, kept_as), False, kept=True))
        else:
            choice = resolve(media_range, stored)
            if choice is not None:
                found.append(choice)
    if not found:
        raise NotAcceptable(
            f"none of the accepted media types can be answered for this instance, stored as {stored}: "
            f"{offers(stored)}; transcoding is offered to JPEG 2000 and JPEG-LS lossless only, from frames "
            f"that decode without loss")
    return found


def offers(stored: str) -> str:
    """What can be asked for an instance stored in this transfer syntax (for the 406 message)."""
    offered = ['multipart/related; type="application/octet-stream"; transfer-syntax=*']
    if stored in UNCOMPRESSED or stored in DECODABLE:
        offered.insert(0, 'multipart/related; type="application/octet-stream" (uncompressed, 1.2.840.10008.1.2.1)')
    if stored not in UNCOMPRESSED:
        offered.append(f'multipart/related; type="{LABELS.get(stored, OCTET_STREAM)}"; transfer-syntax={stored}')
    return ", ".join(offered)


# ---------------------------------------------------------------------------
# Answer


def public_base(settings: DicomWebSettings, headers: dict[str, str]) -> str:
    """The DICOMweb root as clients reach it, as the DICOMweb plugin 1.7 builds it: ``Host`` and
    ``Ssl`` from its configuration, else the first ``Forwarded`` element (host=, proto=), else the
    ``Host`` header."""
    host, https = settings.host, settings.ssl
    if not host and headers.get("forwarded"):
        for token in headers["forwarded"].split(",")[0].split(";"):
            if token.count("=") != 1:
                continue
            key, value = (part.strip() for part in token.split("="))
            if key.lower() == "host":
                host = value
            elif key.lower() == "proto" and value in ("http", "https"):
                https = value == "https"
    host = host or headers.get("host", "") or "localhost:8042"
    return ("https://" if https else "http://") + host + settings.root


def new_boundary() -> str:
    """Shaped like Orthanc's: two UUIDs, 70 characters."""
    return f"{uuid.uuid4()}-{uuid.uuid4()}"[:70]


def multipart(parts: list[tuple[str, bytes]], content_type: str, boundary: str) -> bytes:
    """The multipart/related body, framed as the DICOMweb plugin's (Content-Location first)."""
    chunks = []
    for location, data in parts:
        chunks += [f"--{boundary}\r\nContent-Location: {location}\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(data)}\r\nMIME-Version: 1.0\r\n\r\n".encode(), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks)


def pixel_module(tags: dict) -> Dataset:
    """The Image Pixel attributes a decoder needs, from Orthanc's ``/tags?short``."""
    dataset = Dataset()
    for keyword in PIXEL_KEYWORDS:
        tag = tag_for_keyword(keyword)
        value = tags.get(f"{tag >> 16:04x},{tag & 0xFFFF:04x}")
        if not isinstance(value, str) or not value.strip():
            continue
        if keyword == "PhotometricInterpretation":
            dataset.PhotometricInterpretation = value.strip()
        elif re.fullmatch(r"\s*[0-9]+\s*", value.split("\\")[0]):
            setattr(dataset, keyword, int(value.split("\\")[0]))
    return dataset


class WadoFrameRoutes:
    def __init__(self, pacs: Pacs, settings: DicomWebSettings):
        self.pacs = pacs
        self.settings = settings

    def routes(self) -> list[tuple[str, object]]:
        if not self.settings.enabled:  # the DICOMweb plugin does not serve DICOMweb: neither do we
            return []
        base = re.escape(self.settings.root) + "studies/([^/]*)/series/([^/]*)/instances/([^/]*)/frames"
        return [(base, self.frames), (base + "/([^/]*)", self.frames)]

    def frames(self, request: Request) -> Response:
        allow(request, "GET")
        study, series, sop = request.groups[:3]
        numbers = parse_frame_list(request.groups[3] if len(request.groups) > 3 else None,
                                   self.pacs.plus_arrives_as_space())
        instance_id = self.locate(study, series, sop)
        stored = self.pacs.transfer_syntax(instance_id)
        kept = self.pacs.kept_codestreams(instance_id)
        candidates = choices(parse_accept(request.headers.get("accept")), stored, kept[0] if kept else None)
        count = len(json.loads(self.pacs.core_get(f"/instances/{instance_id}/frames")))
        numbers = check_frames(numbers, count)
        location = public_base(self.settings, request.headers) + f"studies/{study}/series/{series}/instances/{sop}/"
        failure = None
        for choice in candidates:
            try:
                bodies = [kept[1][number - 1] for number in numbers] if choice.kept else \
                    self._frames(instance_id, stored, numbers, choice)
            except CannotDecode as error:  # try the client's next choice
                failure = failure or error
                continue
            except NeuroNovaError:
                # Orthanc counts one frame in an instance without pixel data, and fails to give it
                if "7fe0-0010" not in json.loads(self.pacs.core_get(f"/instances/{instance_id}/content")):
                    raise BadRequest("this instance has no pixel data: it has no frames") from None
                raise
            boundary = new_boundary()
            body = multipart([(f"{location}frames/{number}", data) for number, data in zip(numbers, bodies)],
                             choice.content_type, boundary)
            return Response(200, body, f'multipart/related; type="{choice.content_type}"; boundary={boundary}')
        raise NotAcceptable(f"the frames cannot be decoded to uncompressed pixels: {failure}; {offers(stored)}")

    def locate(self, study: str, series: str, sop: str) -> str:
        """Orthanc's ID of the instance with this SOP Instance UID in this study and series (else 404)."""
        matches = json.loads(self.pacs.core_post("/tools/lookup", sop.encode())) if sop else []
        instances = [match["ID"] for match in matches if match.get("Type") == "Instance"]
        if not instances:
            raise NotFound(f"Accessing an inexistent instance with WADO-RS: {sop}")
        for instance_id in instances:
            in_series = json.loads(self.pacs.core_get(f"/instances/{instance_id}/series"))
            in_study = json.loads(self.pacs.core_get(f"/instances/{instance_id}/study"))
            if (in_series.get("MainDicomTags", {}).get("SeriesInstanceUID") == series
                    and in_study.get("MainDicomTags", {}).get("StudyInstanceUID") == study):
                return instance_id
        raise NotFound(f"Instance {sop} is not both in study {study} and in series {series}")

    def _frames(self, instance_id: str, stored: str, numbers: list[int], choice: Choice) -> list[bytes]:
        raw = {number: self.pacs.core_get(f"/instances/{instance_id}/frames/{number - 1}/raw")
               for number in dict.fromkeys(numbers)}
        if (not choice.decode or stored in UNCOMPRESSED) and not choice.encode:
            return [raw[number] for number in numbers]
        module = pixel_module(json.loads(self.pacs.core_get(f"/instances/{instance_id}/tags?short")))
        decoded = raw if stored in UNCOMPRESSED else {
            number: self._decode(instance_id, number, data, module, stored) for number, data in raw.items()}
        if choice.encode:
            decoded = {number: encode_frame(data, module, choice.encode) for number, data in decoded.items()}
        return [decoded[number] for number in numbers]

    def _decode(self, instance_id: str, number: int, data: bytes, module: Dataset, stored: str) -> bytes:
        try:
            return frame_to_little_endian(data, module, stored)
        except CannotDecode:
            grayscale = int(module.get("SamplesPerPixel", 1) or 1) == 1
            if not grayscale or int(module.get("BitsAllocated", 0) or 0) not in (8, 16):
                raise
        # Grayscale the plugin's decoders refuse (12-bit lossy JPEG): Orthanc's own decoder, through
        # its raw image routes, which keep every value of an 8-bit / 16-bit (signed) grayscale frame
        bits, signed = int(module.BitsAllocated), int(module.get("PixelRepresentation", 0) or 0) == 1
        route = "image-uint8" if bits == 8 else "image-int16" if signed else "image-uint16"
        pixels = imagecodecs.png_decode(self.pacs.core_get(f"/instances/{instance_id}/frames/{number - 1}/{route}"))
        return np.ascontiguousarray(pixels, "u1" if bits == 8 else "<u2").tobytes()  # int16: two's complement
