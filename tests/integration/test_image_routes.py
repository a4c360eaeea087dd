"""Orthanc's image routes answer for HTJ2K instances as the core answers for the same file stored
uncompressed: a second Orthanc without the plugin is the reference, queried with the same URI,
query and Accept header."""

import imagecodecs
import numpy as np
import pytest

from support.dicom_files import parse, read_bytes
from support.servers import OrthancServer

MULTIFRAME, CT = "emri_small.dcm", "693_UNCR.dcm"  # 10-frame MR (unsigned 16-bit), CT (signed, rescaled)
PNG, JPEG, PAM = "image/png", "image/jpeg", "image/x-portable-arbitrarymap"


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    """Plain Orthanc, no plugin: stores what it receives, renders with its own code."""
    server = OrthancServer(str(tmp_path_factory.mktemp("core")), plugin=False).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stored(orthanc, core):
    """{file name: (our HTJ2K instance ID, the core's uncompressed instance ID)}."""
    orthanc.clear()
    ids = {}
    for name in (MULTIFRAME, CT, "US1_UNCR.dcm", "RG1_UNCR.dcm", "JPEG2000.dcm", "MR_small_RLE.dcm"):
        ours = orthanc.post("/instances", data=read_bytes(name)).json()["ID"]
        ids[name] = (ours, core.post("/instances", data=read_bytes(name)).json()["ID"])
    assert orthanc.get(f"/instances/{ids[MULTIFRAME][0]}/header").json()["0002,0010"]["Value"].startswith(
        "1.2.840.10008.1.2.4.20")
    return ids


def decode(answer):
    if answer.headers["Content-Type"] == PNG:
        return imagecodecs.png_decode(answer.content)
    if answer.headers["Content-Type"] == JPEG:
        return imagecodecs.jpeg8_decode(answer.content)
    header, _, data = answer.content.partition(b"ENDHDR\n")
    fields = dict(line.split(" ", 1) for line in header.decode().splitlines()[1:])
    dtype = ">u2" if fields["MAXVAL"] == "65535" else "u1"
    return np.frombuffer(data, dtype).reshape(int(fields["HEIGHT"]), int(fields["WIDTH"]), -1).squeeze()


def both(orthanc, core, stored, name, path, accept=None):
    ours, theirs = stored[name]
    headers = {"Accept": accept} if accept else {}
    return orthanc.get(path.format(ours), headers=headers), core.get(path.format(theirs), headers=headers)


def assert_same_image(ours, theirs, tolerance=0):
    assert ours.status_code == theirs.status_code == 200, (ours.status_code, ours.text[:200], theirs.status_code)
    assert ours.headers["Content-Type"] == theirs.headers["Content-Type"]
    mine, reference = decode(ours), decode(theirs)
    assert mine.shape == reference.shape and mine.dtype == reference.dtype
    difference = np.abs(mine.astype(np.int64) - reference.astype(np.int64)).max(initial=0)
    assert difference <= tolerance, f"pixels differ by up to {difference}"
    if ours.headers["Content-Type"] == PAM and tolerance == 0:
        assert ours.content == theirs.content  # same header, same big-endian samples


ROUTES = ["image-uint8", "image-uint16", "image-int16", "rendered", "preview"]
PATHS = ["/instances/{{}}/{route}", "/instances/{{}}/frames/0/{route}", "/instances/{{}}/frames/7/{route}"]


@pytest.mark.parametrize("name", [MULTIFRAME, CT])
@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("accept", [None, PNG, PAM])
def test_every_image_route_answers_the_cores_pixels(orthanc, core, stored, name, route, accept):
    rows, columns = parse(read_bytes(name)).Rows, parse(read_bytes(name)).Columns
    for path in PATHS if name == MULTIFRAME else PATHS[:2]:
        ours, theirs = both(orthanc, core, stored, name, path.format(route=route), accept)
        assert_same_image(ours, theirs)
        assert decode(ours).shape[:2] == (rows, columns)


@pytest.mark.parametrize("name", [MULTIFRAME, CT])
@pytest.mark.parametrize("route", ["image-uint8", "rendered", "preview"])
def test_jpeg_renderings_match_the_cores(orthanc, core, stored, name, route):
    for query in ("", "?quality=60"):
        ours, theirs = both(orthanc, core, stored, name, f"/instances/{{}}/frames/0/{route}{query}", JPEG)
        assert_same_image(ours, theirs, tolerance=0)
        assert ours.content == theirs.content  # libjpeg, same quality: the very same file


RENDER_QUERIES = [
    "?window-center=40&window-width=400",
    "?window-center=-600.5&window-width=1500",
    "?window-center=100&window-width=0.5",
    "?width=32",
    "?height=50",
    "?width=100&height=40",
    "?width=37&smooth=1",
    "?width=300&height=300&smooth=true",
    "?window-center=1000&window-width=2000&width=20&height=20&smooth=1",
]


@pytest.mark.parametrize("name", [MULTIFRAME, CT])
@pytest.mark.parametrize("query", RENDER_QUERIES)
def test_rendered_with_window_and_size_arguments(orthanc, core, stored, name, query):
    for path in ("/instances/{}/rendered", "/instances/{}/frames/0/rendered"):
        ours, theirs = both(orthanc, core, stored, name, path + query)
        assert_same_image(ours, theirs)


@pytest.mark.parametrize("path, accept", [
    ("/instances/{}/frames/10/rendered", None),  # no such frame
    ("/instances/{}/frames/10/image-uint16", None),
    ("/instances/{}/rendered?window-width=abc", None),
    ("/instances/{}/rendered?width=-3", None),
    ("/instances/{}/image-uint8", "text/html"),  # nothing acceptable
    ("/instances/{}/image-uint16", JPEG),  # JPEG of 16-bit values
    ("/instances/{}/rendered?quality=0", JPEG),
    ("/instances/{}/rendered?smooth=maybe", None),
    ("/instances/{}/image-uint8", "image/png;q=2"),
])
def test_errors_have_the_cores_status(orthanc, core, stored, path, accept):
    ours, theirs = both(orthanc, core, stored, MULTIFRAME, path, accept)
    assert theirs.status_code in (404, 415)
    assert ours.status_code == theirs.status_code, ours.text


def test_content_negotiation_follows_orthanc(orthanc, core, stored):
    for accept in ("*/*", "image/*", "image/jpeg;q=0.5, image/png;q=0.9", "image/*;q=1, image/jpeg;q=0.1",
                   "text/html, image/x-portable-arbitrarymap", "image/jpeg, image/png"):
        ours, theirs = both(orthanc, core, stored, CT, "/instances/{}/rendered", accept)
        assert ours.status_code == theirs.status_code == 200
        assert ours.headers["Content-Type"] == theirs.headers["Content-Type"], accept


def test_colour_and_monochrome1_htj2k_instances(orthanc, core, stored):
    for route in ("rendered", "preview", "rendered?width=200&smooth=1"):
        ours, theirs = both(orthanc, core, stored, "US1_UNCR.dcm", f"/instances/{{}}/{route}")
        assert_same_image(ours, theirs)
        assert decode(ours).ndim == 3
    ours, theirs = both(orthanc, core, stored, "US1_UNCR.dcm", "/instances/{}/image-uint8")
    assert ours.status_code == theirs.status_code == 415  # colour has no raw grayscale rendering
    for route in ("rendered", "preview", "image-uint16", "rendered?window-center=2000&window-width=3000"):
        assert_same_image(*both(orthanc, core, stored, "RG1_UNCR.dcm", f"/instances/{{}}/{route}"))


def test_instances_that_are_not_htj2k_get_the_cores_answer(orthanc, core, stored):
    for route in ROUTES:
        ours, theirs = both(orthanc, core, stored, "JPEG2000.dcm", f"/instances/{{}}/{route}")
        assert ours.status_code == theirs.status_code == 200
        assert ours.content == theirs.content  # the core's own PNG, untouched
        assert_same_image(*both(orthanc, core, stored, "JPEG2000.dcm", f"/instances/{{}}/{route}", PAM))
    for route in ("rendered", "preview", "image-uint8"):
        assert_same_image(*both(orthanc, core, stored, "JPEG2000.dcm", f"/instances/{{}}/{route}", JPEG),
                          tolerance=0)
    for route in ("matlab", "numpy", "frames/0/numpy?rescale=0"):  # (the core's matlab cannot decode J2K)
        ours, theirs = both(orthanc, core, stored, "MR_small_RLE.dcm", f"/instances/{{}}/{route}")
        assert ours.status_code == theirs.status_code == 200 and ours.content == theirs.content


@pytest.mark.parametrize("name", [MULTIFRAME, CT, "US1_UNCR.dcm"])
def test_matlab_and_numpy_match_the_core(orthanc, core, stored, name):
    import io

    for path in ("/instances/{}/matlab", "/instances/{}/frames/0/matlab"):
        ours, theirs = both(orthanc, core, stored, name, path)
        assert ours.status_code == theirs.status_code == 200
        assert ours.text == theirs.text  # the same text, value for value
    for path in ("/instances/{}/numpy", "/instances/{}/frames/0/numpy", "/instances/{}/numpy?rescale=0",
                 "/instances/{}/frames/0/numpy?rescale=false&compress=1"):
        ours, theirs = both(orthanc, core, stored, name, path)
        assert ours.status_code == theirs.status_code == 200, path
        mine, reference = np.load(io.BytesIO(ours.content)), np.load(io.BytesIO(theirs.content))
        if "compress" in path:
            mine, reference = mine["arr_0"], reference["arr_0"]
        assert mine.dtype == reference.dtype and np.array_equal(mine, reference), path
    for path in ("/instances/{}/frames/20/numpy", "/instances/{}/numpy?rescale=maybe", "/instances/{}/frames/20/matlab"):
        ours, theirs = both(orthanc, core, stored, name, path)
        assert ours.status_code == theirs.status_code == 400, path
