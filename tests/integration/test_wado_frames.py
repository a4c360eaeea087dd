"""WADO-RS Retrieve Frames (``/dicom-web/studies/.../instances/{sop}/frames/{list}``), answered by the
plugin for every instance, as a web viewer fetches frames (requests, one Accept header per case).

* instances kept as HTJ2K on disk: the stored codestream untouched (checked against the fragments
  of the file on disk and decoded by pylibjpeg-openjpeg), or decoded little-endian pixels equal to
  pydicom's pixels of the original file;
* every other instance: the DICOMweb plugin's own answer, byte for byte (part bodies and part
  headers), compared with a second Orthanc without the NeuroNova plugin that stores the same files;
* the rest of DICOMweb (metadata, whole instances, rendered frames, QIDO-RS) still answered by the
  DICOMweb plugin.

The reference Orthanc's DICOMweb plugin transcodes with GDCM / DCMTK on an HTTP thread and dies
now and then doing so (a stack overflow in GDCM, measured): a request that kills it is retried on
a restarted reference. Measured on Orthanc 1.10.1 with the GDCM plugin (Debian 12): about one in
five requests for a frame of MR_small_RLE.dcm without Accept kills it (30 of 150 in a row), so
four attempts in a row all failed now and then; twelve leave a chance of about 4e-9. On Debian 13 the
GDCM plugin (1.8) is left out of every test Orthanc (scripts/runtime_config.py), so DCMTK transcodes there.
"""

from __future__ import annotations

import io
import re
import subprocess

import imagecodecs
import numpy as np
import openjpeg
import pytest
import requests
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array as pydicom_pixels
from pydicom.uid import generate_uid

from support.dicom_files import parse, read_bytes
from support.servers import OrthancServer

HTJ2K = "1.2.840.10008.1.2.4.201"
J2K_LOSSY = "1.2.840.10008.1.2.4.91"
EXPLICIT, IMPLICIT = "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"
OCTET = 'multipart/related; type="application/octet-stream"'
STAR = OCTET + "; transfer-syntax=*"

# Stored as HTJ2K by the plugin: 16-bit signed CT, 10-frame MR, RGB (YBR_RCT), YBR_FULL, 14-bit
# signed, 8-bit palette colour.
HTJ2K_FILES = ["CT_small.dcm", "emri_small.dcm", "US1_UNCR.dcm", "SC_ybr_full_uncompressed.dcm",
               "693_UNCR.dcm", "OBXXXX1A.dcm"]
# Stored as HTJ2K too, but RGB with Planar Configuration 1: its frames are the received ones (a viewer
# follows the metadata's planar layout, which no decoded codestream has).
PLANAR_FILES = ["color-pl.dcm"]
# Stored as they arrive (already compressed; or, with the configuration below, uncompressed but not
# Explicit VR Little Endian, or too small to transcode).
OTHER_FILES = ["MR_small.dcm", "SC_rgb_small_odd.dcm", "MR_small_implicit.dcm", "rtdose.dcm", "MR_small_bigendian.dcm",
               "emri_small_big_endian.dcm", "image_dfl.dcm", "liver.dcm", "JPEG2000.dcm",
               "emri_small_jpeg_2k_lossless.dcm", "US1_J2KR.dcm", "MR_small_jpeg_ls_lossless.dcm",
               "JPEGLSNearLossless_16.dcm", "emri_small_jpeg_ls_lossless.dcm", "MR_small_RLE.dcm", "emri_small_RLE.dcm",
               "SC_rgb_rle_2frame.dcm", "SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm",
               "SC_jpeg_no_color_transform.dcm", "JPEG-LL.dcm", "SC_rgb_jpeg_gdcm.dcm", "JPEG-lossy.dcm"]
# Only Explicit VR Little Endian instances of at least 16 kB are transcoded: the others stay as they are.
CONFIG = {"NeuroNova": {"Transcoding": {"TranscodableSyntaxes": [EXPLICIT], "MinPixelBytes": 16384}}}


def unique(name: str) -> bytes:
    """The test file with UIDs of its own (several pydicom files share one SOP Instance UID)."""
    dataset = parse(read_bytes(name))
    dataset.StudyInstanceUID = generate_uid(entropy_srcs=[name, "study"])
    dataset.SeriesInstanceUID = generate_uid(entropy_srcs=[name, "series"])
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[name, "sop"])
    out = io.BytesIO()
    dataset.save_as(out, enforce_file_format=True)
    return out.getvalue()


class Stored:
    def __init__(self, name: str, data: bytes, instance_id: str):
        self.name, self.data, self.id = name, data, instance_id
        dataset = parse(data)
        self.study, self.series, self.sop = dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID
        self.frames = int(dataset.get("NumberOfFrames", 1) or 1)

    def path(self, frames: str | None = "1", study: str | None = None, series: str | None = None,
             sop: str | None = None) -> str:
        path = (f"/dicom-web/studies/{study or self.study}/series/{series or self.series}"
                f"/instances/{sop or self.sop}/frames")
        return path if frames is None else f"{path}/{frames}"


@pytest.fixture(scope="module")
def ours(tmp_path_factory):
    server = OrthancServer(str(tmp_path_factory.mktemp("ours")), CONFIG).start()
    yield server
    server.stop()


class Reference:
    """Orthanc and its DICOMweb plugin, without NeuroNova; restarted when a request kills it."""

    ATTEMPTS = 12  # a request dies about one time in five (module docstring): 0.2 ** 12 is about 4e-9

    def __init__(self, directory: str):
        self.server = OrthancServer(directory, plugin=False).start()
        self.crashes: list[str] = []

    def get(self, path: str, accept: str | None = None, method: str = "GET") -> requests.Response:
        for _ in range(self.ATTEMPTS):
            try:
                return requests.request(method, self.server.url + path, timeout=60,
                                        headers={"Accept": accept} if accept else {})
            except requests.ConnectionError:
                try:
                    self.server.process.wait(timeout=10)  # it dies a moment after dropping the connection
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"the reference Orthanc dropped {path} ({accept}) and lives on") from None
                self.crashes.append(f"{accept} {path}")
                self.server.stop()
                self.server.start()
        pytest.fail(f"the reference Orthanc died on every attempt at {path} ({accept})")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    server = Reference(str(tmp_path_factory.mktemp("reference")))
    yield server
    server.server.stop()


@pytest.fixture(scope="module")
def stored(ours, reference):
    """{file name: (our Stored, the reference's Stored)}."""
    ours.clear()
    found = {}
    for name in HTJ2K_FILES + PLANAR_FILES + OTHER_FILES:
        data = unique(name)
        pair = []
        for server in (ours, reference.server):
            answer = server.post("/instances", data=data)
            assert answer.status_code == 200, (name, answer.text)
            pair.append(Stored(name, data, answer.json()["ID"]))
        found[name] = tuple(pair)
    for name in HTJ2K_FILES + PLANAR_FILES:
        assert syntax_of(ours, found[name][0]) == HTJ2K, name
    for name in OTHER_FILES:
        assert syntax_of(ours, found[name][0]) == str(parse(found[name][0].data).file_meta.TransferSyntaxUID), name
    return found


def syntax_of(server, instance: Stored) -> str:
    """The transfer syntax on disk (Orthanc's core reads the received file in any case)."""
    if server is not ours_server(server):
        return server.get(f"/instances/{instance.id}/header").json()["0002,0010"]["Value"].strip("\0 ")
    return str(parse(server.stored_file(instance.id)).file_meta.TransferSyntaxUID)


def ours_server(server):
    return server if "NeuroNova" in server.config else None


def get(server, path: str, accept: str | None = None, **headers) -> requests.Response:
    return server.get(path, headers={**({"Accept": accept} if accept else {}), **headers})


# ---------------------------------------------------------------------------
# Reading multipart answers strictly


def read_multipart(answer: requests.Response) -> tuple[str, list[tuple[list[tuple[str, str]], bytes]]]:
    """(the type parameter of the answer, [(part headers in order, part body)]); checks the framing."""
    assert answer.status_code == 200, answer.text[:300]
    match = re.fullmatch(r'multipart/related; type="([^"]+)"; boundary=([0-9A-Za-z\-]+)',
                         answer.headers["Content-Type"])
    assert match, answer.headers["Content-Type"]
    media_type, boundary = match.group(1), match.group(2).encode()
    body = answer.content
    assert body.startswith(b"--" + boundary + b"\r\n") and body.endswith(b"\r\n--" + boundary + b"--\r\n")
    parts = []
    for chunk in body[len(boundary) + 4:-(len(boundary) + 8)].split(b"\r\n--" + boundary + b"\r\n"):
        head, _, data = chunk.partition(b"\r\n\r\n")
        headers = [tuple(line.split(": ", 1)) for line in head.decode("ascii").split("\r\n")]
        assert dict(headers)["Content-Length"] == str(len(data))
        parts.append((headers, data))
    return media_type, parts


def part_type(part) -> str:
    return dict(part[0])["Content-Type"]


def frame_numbers(parts) -> list[int]:
    return [int(dict(headers)["Content-Location"].rsplit("/frames/", 1)[1]) for headers, _ in parts]


# ---------------------------------------------------------------------------
# HTJ2K instances


def stored_codestreams(server, instance: Stored) -> list[bytes]:
    dataset = parse(server.stored_file(instance.id))
    return list(generate_frames(dataset.PixelData, number_of_frames=instance.frames))


def original_frame(instance: Stored, number: int) -> np.ndarray:
    """pydicom's pixels of the original (uncompressed) file, no colour conversion, (rows, columns[, 3])."""
    return pydicom_pixels(io.BytesIO(instance.data), index=number - 1, raw=True)


def as_array(data: bytes, instance: Stored) -> np.ndarray:
    dataset = parse(instance.data)
    dtype = "u1" if dataset.BitsAllocated == 8 else "<i2" if dataset.PixelRepresentation else "<u2"
    shape = (dataset.Rows, dataset.Columns) + ((3,) if dataset.SamplesPerPixel == 3 else ())
    return np.frombuffer(data, dtype).reshape(shape)


@pytest.mark.parametrize("name", HTJ2K_FILES)
@pytest.mark.parametrize("accept, content_type", [
    (STAR, f"application/octet-stream; transfer-syntax={HTJ2K}"),
    (f"{OCTET}; transfer-syntax={HTJ2K}", f"application/octet-stream; transfer-syntax={HTJ2K}"),
    ('multipart/related; type="image/jphc"', f"image/jphc; transfer-syntax={HTJ2K}"),
    (f'multipart/related; type="image/jphc"; transfer-syntax={HTJ2K}', f"image/jphc; transfer-syntax={HTJ2K}"),
    ("multipart/related; type=image/jphc; transfer-syntax=*", f"image/jphc; transfer-syntax={HTJ2K}"),
    ("*/*", f"application/octet-stream; transfer-syntax={HTJ2K}"),  # whatever comes; also requests' default
])
def test_htj2k_frames_are_the_stored_codestreams(ours, stored, name, accept, content_type):
    instance = stored[name][0]
    numbers = [instance.frames, 1] if instance.frames > 1 else [1]
    media_type, parts = read_multipart(get(ours, instance.path(",".join(map(str, numbers))), accept))
    assert media_type == content_type
    assert [part_type(part) for part in parts] == [content_type] * len(numbers)
    assert frame_numbers(parts) == numbers
    codestreams = stored_codestreams(ours, instance)
    for number, (_, data) in zip(numbers, parts):
        assert data == codestreams[number - 1]  # untouched
        decoded = openjpeg.decode(data)  # an independent HTJ2K decoder
        assert np.array_equal(decoded, original_frame(instance, number))


@pytest.mark.parametrize("name", HTJ2K_FILES + PLANAR_FILES)
@pytest.mark.parametrize("accept, syntax", [
    ("multipart/related", EXPLICIT), (OCTET, EXPLICIT),
    (f"{OCTET}; transfer-syntax={EXPLICIT}", EXPLICIT), (f"{OCTET}; transfer-syntax={IMPLICIT}", IMPLICIT),
])
def test_htj2k_frames_asked_uncompressed_are_the_dicomweb_plugins_answer(ours, reference, stored, name, accept,
                                                                         syntax):
    """Without HTJ2K in the Accept header, the received frames, as the DICOMweb plugin answers them."""
    instance, theirs = stored[name]
    numbers = ",".join(map(str, range(1, instance.frames + 1)))
    answer = get(ours, instance.path(numbers), accept)
    media_type, parts = read_multipart(answer)
    assert media_type == f"application/octet-stream; transfer-syntax={syntax}"
    if parse(instance.data).PhotometricInterpretation != "YBR_FULL":
        # (YBR_FULL: the DICOMweb plugin, decoding with GDCM, answers RGB under metadata that says
        # YBR_FULL; the plugin answers the pixels as received, which the metadata describes: README)
        expected = comparable(reference.get(theirs.path(numbers), accept), reference.server.url)
        assert comparable(answer, ours.url) == expected
    if parse(instance.data).get("PlanarConfiguration", 0) == 0:  # raw frames are as received: planar stays planar
        for number, (_, data) in zip(range(1, instance.frames + 1), parts):
            assert np.array_equal(as_array(data, instance), original_frame(instance, number))


def test_multiframe_lists_keep_order_repeats_and_locations(ours, stored):
    instance = stored["emri_small.dcm"][0]
    codestreams = stored_codestreams(ours, instance)
    for frames, numbers in [("3,1,10", [3, 1, 10]), ("2,2", [2, 2]), ("4%2C5", [4, 5]), ("+7", [7]), ("09", [9])]:
        _, parts = read_multipart(get(ours, instance.path(frames), STAR))
        assert frame_numbers(parts) == numbers
        assert [data for _, data in parts] == [codestreams[n - 1] for n in numbers]
    _, parts = read_multipart(get(ours, instance.path(None), STAR))  # every frame
    assert frame_numbers(parts) == list(range(1, 11))
    assert [data for _, data in parts] == codestreams
    _, parts = read_multipart(get(ours, instance.path("10,1"), OCTET))
    assert np.array_equal(as_array(parts[0][1], instance), original_frame(instance, 10))
    location = dict(parts[0][0])["Content-Location"]
    assert location == f"{ours.url}/dicom-web/studies/{instance.study}/series/{instance.series}/instances/" \
                       f"{instance.sop}/frames/10"


def test_content_location_follows_the_forwarded_and_host_headers(ours, stored):
    instance = stored["CT_small.dcm"][0]
    forwarded = "for=10.0.0.1;host=pacs.example.org;proto=https"
    _, parts = read_multipart(get(ours, instance.path(), STAR, Forwarded=forwarded))
    assert dict(parts[0][0])["Content-Location"].startswith("https://pacs.example.org/dicom-web/studies/")
    _, parts = read_multipart(get(ours, instance.path(), STAR, Host="viewer.local:8080"))
    assert dict(parts[0][0])["Content-Location"].startswith("http://viewer.local:8080/dicom-web/studies/")


@pytest.mark.parametrize("accept", [
    f"{OCTET}; transfer-syntax=1.2.840.10008.1.2.4.90",
    'multipart/related; type="image/jphc"; transfer-syntax=1.2.840.10008.1.2.4.202',
    'multipart/related; type="image/jp2"; transfer-syntax=1.2.840.10008.1.2.4.91',  # lossy: never encoded
    'multipart/related; type="image/dicom-rle"',  # no RLE encoder offered
    'multipart/related; type="image/jpeg"',  # JPEG lossless: not from inside Orthanc (libjpeg clash)
    "application/octet-stream", "image/jphc", "application/dicom",
])
def test_what_cannot_be_given_is_not_acceptable(ours, stored, accept):
    answer = get(ours, stored["emri_small.dcm"][0].path("1"), accept)
    assert answer.status_code == 406, answer.text
    assert "transfer-syntax=*" in answer.json()["error"]


def test_several_media_ranges_are_negotiated(ours, stored):
    instance = stored["emri_small.dcm"][0]
    media_type, _ = read_multipart(get(ours, instance.path(),
                                       f'multipart/related; type="image/jp2"; transfer-syntax={J2K_LOSSY}, {STAR}'))
    assert media_type == f"application/octet-stream; transfer-syntax={HTJ2K}"
    accept = f'multipart/related; type="image/jphc"; q=0.5, {OCTET}; q=0.9'
    media_type, _ = read_multipart(get(ours, instance.path(), accept))
    assert media_type == f"application/octet-stream; transfer-syntax={EXPLICIT}"
    # the nested form Orthanc itself writes in its Content-Type
    accept = f'multipart/related; type="application/octet-stream; transfer-syntax={HTJ2K}"'
    media_type, _ = read_multipart(get(ours, instance.path(), accept))
    assert media_type == f"application/octet-stream; transfer-syntax={HTJ2K}"


# ---------------------------------------------------------------------------
# Every other instance: the DICOMweb plugin's answer


def comparable(answer: requests.Response, server_url: str):
    """An answer without what is random (the boundary) or local (the host in Content-Location)."""
    if answer.status_code != 200:
        return answer.status_code
    media_type, parts = read_multipart(answer)
    return media_type, [([(key, value.replace(server_url, "HOST")) for key, value in headers], data)
                        for headers, data in parts]


def list_for(instance: Stored) -> str:
    return "3,1" if instance.frames >= 3 else "1"


def stored_media(name: str) -> list[str]:
    """Accept headers that name the stored transfer syntax with its own media type (aliases too)."""
    syntax = str(parse(read_bytes(name)).file_meta.TransferSyntaxUID)
    types = {"1.2.840.10008.1.2.4.50": ["image/jpeg"], "1.2.840.10008.1.2.4.51": ["image/jpeg"],
             "1.2.840.10008.1.2.4.70": ["image/jpeg", "image/dicom+jpeg"],
             "1.2.840.10008.1.2.4.80": ["image/jls", "image/x-jls"],
             "1.2.840.10008.1.2.4.81": ["image/jls"], "1.2.840.10008.1.2.4.90": ["image/jp2", "image/dicom+jp2"],
             "1.2.840.10008.1.2.4.91": ["image/jp2"], "1.2.840.10008.1.2.5": ["image/dicom-rle", "image/x-dicom-rle"]}
    return [f'multipart/related; type="{media}"; transfer-syntax={syntax}' for media in types.get(syntax, [])]


@pytest.mark.parametrize("name", OTHER_FILES + PLANAR_FILES)
def test_other_instances_get_the_dicomweb_plugins_answer_byte_for_byte(ours, reference, stored, name):
    mine, theirs = stored[name]
    syntax = str(parse(mine.data).file_meta.TransferSyntaxUID)
    accepts = [None, "*/*", OCTET, f"{OCTET}; transfer-syntax={EXPLICIT}", f"{OCTET}; transfer-syntax={IMPLICIT}",
               *stored_media(name)]
    if syntax not in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"):  # the plugin answers 500 for these
        accepts.append(STAR)
    for accept in accepts:
        expected = comparable(reference.get(theirs.path(list_for(theirs)), accept), reference.server.url)
        assert expected != 500 and expected != 400, (accept, expected)
        assert comparable(get(ours, mine.path(list_for(mine)), accept), ours.url) == expected, accept


@pytest.mark.parametrize("name", ["MR_small_bigendian.dcm", "emri_small_big_endian.dcm", "image_dfl.dcm"])
def test_big_endian_and_deflated_instances_asked_for_any_syntax_answer_little_endian(ours, reference, stored, name):
    """The DICOMweb plugin 1.7 answers 500 there; Orthanc's raw frames of them are little endian."""
    mine, theirs = stored[name]
    assert reference.get(theirs.path("1"), STAR).status_code == 500
    expected = comparable(reference.get(theirs.path(list_for(theirs)), OCTET), reference.server.url)
    assert comparable(get(ours, mine.path(list_for(mine)), STAR), ours.url) == expected


@pytest.mark.parametrize("name", ["JPEG2000.dcm", "emri_small_RLE.dcm", "SC_rgb_jpeg_dcmtk.dcm", "JPEG-LL.dcm"])
def test_the_stored_syntax_asked_as_octet_stream_is_the_stored_frame(ours, reference, stored, name):
    """The DICOMweb plugin 1.7 answers 400 there; PS3.18 lets the stored syntax be asked by name."""
    mine, theirs = stored[name]
    syntax = str(parse(mine.data).file_meta.TransferSyntaxUID)
    assert reference.get(theirs.path("1"), f"{OCTET}; transfer-syntax={syntax}").status_code == 400
    _, expected = read_multipart(reference.get(theirs.path(list_for(theirs)), STAR))
    media_type, parts = read_multipart(get(ours, mine.path(list_for(mine)), f"{OCTET}; transfer-syntax={syntax}"))
    assert media_type == f"application/octet-stream; transfer-syntax={syntax}"
    assert [data for _, data in parts] == [data for _, data in expected]


def test_every_frame_of_a_multiframe_instance(ours, reference, stored):
    """``.../frames`` without a list: every frame (the DICOMweb plugin 1.7 leaves the first out)."""
    mine, theirs = stored["emri_small_RLE.dcm"]
    _, expected = read_multipart(reference.get(theirs.path(",".join(map(str, range(1, 11)))), STAR))
    _, parts = read_multipart(get(ours, mine.path(None), STAR))
    assert frame_numbers(parts) == list(range(1, 11))
    assert [data for _, data in parts] == [data for _, data in expected]


@pytest.mark.parametrize("name", ["emri_small.dcm", "MR_small.dcm", "US1_UNCR.dcm", "emri_small_jpeg_2k_lossless.dcm"])
@pytest.mark.parametrize("media_type, syntax", [("image/jp2", "1.2.840.10008.1.2.4.90"),
                                                ("image/jls", "1.2.840.10008.1.2.4.80")])
def test_another_lossless_syntax_is_encoded_by_the_plugin_and_decodes_to_the_pixels(ours, stored, name, media_type,
                                                                                     syntax):
    """The DICOMweb plugin would transcode with Orthanc's transcoder (which killed Orthanc for JPEG 2000,
    JPEG-LS and RLE targets here): the plugin encodes with its own libraries and checks the decoding."""
    instance = stored[name][0]
    answer = get(ours, instance.path("1"), f'multipart/related; type="{media_type}"; transfer-syntax={syntax}')
    dataset = parse(instance.data)
    if media_type != "image/jp2" and (dataset.PixelRepresentation == 1 or dataset.SamplesPerPixel != 1):
        assert answer.status_code == 406, answer.text  # those encoders take unsigned grayscale only
        return
    kind, parts = read_multipart(answer)
    assert kind == f"{media_type}; transfer-syntax={syntax}"
    (_, data), = parts
    decoded = openjpeg.decode(data) if media_type == "image/jp2" else imagecodecs.jpegls_decode(data)
    assert np.array_equal(decoded.astype(original_frame(instance, 1).dtype), original_frame(instance, 1))


@pytest.mark.parametrize("case", ["unknown instance", "other study", "other series", "frame 0", "frame past the end",
                                  "frame -1", "not a number", "empty item", "spaces", "POST", "DELETE"])
def test_errors_have_the_dicomweb_plugins_status(ours, reference, stored, case):
    other = stored["CT_small.dcm"]
    statuses = []
    for server, instance, elsewhere in ((ours, stored["emri_small_RLE.dcm"][0], other[0]),
                                        (reference, stored["emri_small_RLE.dcm"][1], other[1])):
        path, method = {
            "unknown instance": (instance.path("1", sop="1.2.3.4.5"), "GET"),
            "other study": (instance.path("1", study=elsewhere.study), "GET"),
            "other series": (instance.path("1", series=elsewhere.series), "GET"),
            "frame 0": (instance.path("0"), "GET"),
            "frame past the end": (instance.path("2,11"), "GET"),
            "frame -1": (instance.path("-1"), "GET"),
            "not a number": (instance.path("1,x"), "GET"),
            "empty item": (instance.path("1,,2"), "GET"),
            "spaces": (instance.path("3,%201"), "GET"),
            "POST": (instance.path("1"), "POST"),
            "DELETE": (instance.path("1"), "DELETE"),
        }[case]
        if server is reference:
            answer = reference.get(path, STAR, method)
        else:
            answer = requests.request(method, ours.url + path, headers={"Accept": STAR}, timeout=60)
        statuses.append(answer.status_code)
        if answer.status_code == 405:
            assert answer.headers["Allow"] == "GET"
    assert statuses[0] == statuses[1] and statuses[0] in (400, 404, 405), statuses


def test_an_instance_without_pixel_data_is_a_bad_request(ours):
    data = read_bytes("rtplan.dcm")
    ours.post("/instances", data=data)
    dataset = parse(data)
    answer = ours.get(f"/dicom-web/studies/{dataset.StudyInstanceUID}/series/{dataset.SeriesInstanceUID}/instances/"
                      f"{dataset.SOPInstanceUID}/frames/1", headers={"Accept": STAR})
    assert answer.status_code == 400, answer.text


def test_twelve_bit_lossy_jpeg_is_decoded_by_orthanc_as_the_dicomweb_plugin_does(ours, reference, stored):
    """The plugin's libjpeg-turbo cannot decode 12-bit JPEG inside Orthanc; Orthanc's own decoder does."""
    mine, theirs = stored["JPEG-lossy.dcm"]
    expected = comparable(reference.get(theirs.path("1"), OCTET), reference.server.url)
    assert comparable(get(ours, mine.path("1"), OCTET), ours.url) == expected


# ---------------------------------------------------------------------------
# The rest of DICOMweb is still the DICOMweb plugin's


def test_metadata_and_whole_instances_are_still_the_dicomweb_plugins(ours, reference, stored):
    for name in ("emri_small.dcm", "JPEG2000.dcm"):
        mine, theirs = stored[name]
        base = mine.path(None)[:-len("/frames")]
        metadata = ours.get(base + "/metadata")
        assert metadata.status_code == 200 and metadata.headers["Content-Type"].startswith("application/dicom+json")
        assert metadata.json()[0]["00080018"]["Value"] == [mine.sop]
        if name == "JPEG2000.dcm":  # the same instance stored the same way: the same metadata
            expected = reference.get(theirs.path(None)[:-len("/frames")] + "/metadata")
            assert metadata.text.replace(ours.url, "HOST") == expected.text.replace(reference.server.url, "HOST")
        whole = ours.get(base, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
        assert whole.status_code == 200
        assert ours.get(f"/instances/{mine.id}/file").content in whole.content  # the stored file, HTJ2K for emri
    studies = ours.get("/dicom-web/studies", params={"StudyInstanceUID": stored["emri_small.dcm"][0].study})
    assert studies.status_code == 200 and len(studies.json()) == 1
    mine, theirs = stored["MR_small.dcm"]
    rendered = ours.get(mine.path("1") + "/rendered", headers={"Accept": "image/png"})
    expected = reference.get(theirs.path("1") + "/rendered", "image/png")
    assert rendered.status_code == expected.status_code == 200
    assert rendered.content == expected.content


def test_no_request_killed_our_orthanc(ours, reference):
    assert ours.alive()
    print("reference Orthanc restarts:", reference.crashes)
