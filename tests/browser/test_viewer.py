"""The OHIF Viewer the plugin serves (/neuronova/viewer/), in headless Debian Chromium (software WebGL) on
a real Orthanc with the plugin: the pixels OHIF decoded, taken from Cornerstone's image cache, are
pydicom's decode of the original files; every request OHIF made stayed on the origin and answered 2xx;
the frames came as HTJ2K, the storage area's own codestreams."""

from __future__ import annotations

import base64
import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import requests
from neuronova.storage import container
from playwright.sync_api import expect
from support.dicom_files import parse, read_bytes
from support.servers import OrthancServer, free_port

HTJ2K = "1.2.840.10008.1.2.4.201"
DIST = os.path.join(os.path.dirname(__file__), "..", "..", "plugin", "neuronova", "viewer", "ohif", "node_modules",
                    "@ohif", "app", "dist", "index.html")
# name shown in the test ids -> pydicom test file
STUDIES = {"ct": "CT_small.dcm", "mr": "MR_small.dcm", "multiframe": "emri_small.dcm", "rgb8": "US1_UNCR.dcm",
           "rgb16": "SC_rgb_16bit.dcm"}

needs_ohif = pytest.mark.skipif(not os.path.exists(DIST), reason="the OHIF Viewer is not installed here: `make setup` "
                                "installs it with npm (the registry was unreachable when it last ran)")

# Every image of the viewport's stack, once Cornerstone has loaded it: its pixels (base64), type and scaling.
CACHED_PIXELS = """async () => {
  const cs = window.cornerstone;
  const viewport = cs.getEnabledElements()[0].viewport;
  const images = [];
  for (const imageId of viewport.getImageIds()) {
    const image = await cs.imageLoader.loadAndCacheImage(imageId);
    const pixels = image.getPixelData();
    const bytes = new Uint8Array(pixels.buffer, pixels.byteOffset, pixels.byteLength);
    let text = '';
    for (let i = 0; i < bytes.length; i += 32768) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 32768));
    }
    images.push({imageId, type: pixels.constructor.name, rgba: !!image.rgba,
                 scaled: !!(image.preScale && image.preScale.scaled),
                 scaling: (image.preScale && image.preScale.scalingParameters) || {}, data: btoa(text)});
  }
  return images;
}"""
VIEWPORT_READY = """() => {
  const cs = window.cornerstone;
  const element = cs && cs.getEnabledElements()[0];
  return !!(element && element.viewport && element.viewport.getImageIds().length &&
            element.viewport.getCurrentImageId && element.viewport.getCurrentImageId());
}"""
TYPES = {"Uint8Array": np.uint8, "Uint8ClampedArray": np.uint8, "Uint16Array": np.uint16, "Int16Array": np.int16,
         "Float32Array": np.float32}


@pytest.fixture(scope="module")
def stored_studies(orthanc):
    """The studies, stored by the plugin (HTJ2K on disk): {key: (StudyInstanceUID, Orthanc instance ID)}."""
    orthanc.clear()
    stored = {}
    for key, name in STUDIES.items():
        answer = orthanc.post("/instances", data=read_bytes(name), headers={"Content-Type": "application/dicom"})
        assert answer.ok, answer.text
        instance = answer.json()["ID"]
        assert container.frame_codestreams(orthanc.stored_file(instance))[0] == HTJ2K, f"{name} not kept as HTJ2K"
        stored[key] = (orthanc.get(f"/instances/{instance}/study").json()["MainDicomTags"]["StudyInstanceUID"], instance)
    return stored


def expected_frames(name: str, image: dict, frame: int) -> np.ndarray:
    """pydicom's decode of the original file, as Cornerstone keeps it (with its modality scaling, if applied)."""
    dataset = parse(read_bytes(name))
    pixels = dataset.pixel_array
    pixels = pixels[frame] if int(dataset.get("NumberOfFrames", 1) or 1) > 1 else pixels
    if image["rgba"]:
        pixels = np.concatenate([pixels, np.full(pixels.shape[:2] + (1,), 255, pixels.dtype)], axis=-1)
    if image["scaled"]:
        return pixels * image["scaling"].get("rescaleSlope", 1) + image["scaling"].get("rescaleIntercept", 0)
    return pixels


def multipart_parts(body: bytes, content_type: str) -> list[bytes]:
    boundary = re.search(r"boundary=([^;]+)", content_type).group(1).strip('"').encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:-1]:
        parts.append(chunk.split(b"\r\n\r\n", 1)[1][:-2])  # headers, then the data and its CRLF
    return parts


def multi_component_transform(codestream: bytes) -> bool:
    """The MCT byte of the main header's COD segment (ISO/IEC 15444-1 A.6.1)."""
    cod = codestream.index(b"\xff\x52")
    return codestream[cod + 8] == 1


def open_study(session, study_uid: str, prefix: str = ""):
    """Open the viewer on one study; answers (status, url, content type, body of frames) of every request."""
    page, responses = session.page, []

    def record(response):
        frames = "/frames/" in response.url
        responses.append((response.status, response.url, response.headers.get("content-type", ""),
                          response.body() if frames and response.ok else b""))
    page.on("response", record)
    page.goto(f"{prefix}/neuronova/viewer/viewer?StudyInstanceUIDs={study_uid}")
    page.wait_for_function(VIEWPORT_READY, timeout=90000)
    return responses


@needs_ohif
@pytest.mark.parametrize("key", STUDIES)
def test_viewer_shows_the_stored_study_with_the_original_pixels(orthanc, stored_studies, browsing, key):
    name = STUDIES[key]
    study_uid, instance = stored_studies[key]
    session = browsing(orthanc)
    responses = open_study(session, study_uid)
    images = session.page.evaluate(CACHED_PIXELS)
    frames = int(parse(read_bytes(name)).get("NumberOfFrames", 1) or 1)
    assert len(images) == frames
    for number, image in enumerate(images):
        decoded = np.frombuffer(base64.b64decode(image["data"]), TYPES[image["type"]])
        expected = expected_frames(name, image, number).reshape(-1)
        assert decoded.shape == expected.shape, image["imageId"]
        wrong = np.count_nonzero(decoded.astype(np.float64) != expected.astype(np.float64))
        assert wrong == 0, f"{name} frame {number + 1}: {wrong} of {decoded.size} samples differ from pydicom's"

    # The thumbnail of the series, drawn from its frames, is in the study browser.
    thumbnail = session.page.locator("[data-cy='study-browser-thumbnail'] img, [data-cy='study-browser-thumbnail'] canvas")
    expect(thumbnail.first).to_be_visible(timeout=30000)
    session.screenshot(f"viewer-{key}.png")

    origin = orthanc.url
    assert all(url.startswith((origin, "data:", "blob:")) for _, url, _, _ in responses), \
        [url for _, url, _, _ in responses if not url.startswith(origin)]
    failed = [(status, url) for status, url, _, _ in responses if not 200 <= status < 300]
    assert not failed, failed
    assert any("/metadata" in url for _, url, _, _ in responses)
    frame_answers = [(content_type, body) for _, url, content_type, body in responses if "/frames/" in url]
    assert len(frame_answers) >= frames
    codestreams = [bytes(c) for c in container.frame_codestreams(orthanc.stored_file(instance))[1]]
    for content_type, body in frame_answers:
        assert f"transfer-syntax={HTJ2K}" in content_type, content_type
        for part in multipart_parts(body, content_type):
            assert part in codestreams  # the storage area's codestream, untouched
            # colour: with the reversible colour transform (what Cornerstone decodes exactly)
            assert multi_component_transform(part) == (parse(read_bytes(name)).SamplesPerPixel == 3)


@needs_ohif
def test_viewer_works_with_orthanc_authentication(orthanc_with_login, browsing):
    server = orthanc_with_login
    answer = server.post("/instances", data=read_bytes("CT_small.dcm"), headers={"Content-Type": "application/dicom"})
    study_uid = server.get(f"/instances/{answer.json()['ID']}/study").json()["MainDicomTags"]["StudyInstanceUID"]
    user, password = server.USER
    session = browsing(server, http_credentials={"username": user, "password": password})
    responses = open_study(session, study_uid)
    assert [image["type"] for image in session.page.evaluate(CACHED_PIXELS)] == ["Int16Array"]
    assert not [(status, url) for status, url, _, _ in responses if not 200 <= status < 300]


class _PrefixProxy(BaseHTTPRequestHandler):
    """A reverse proxy serving Orthanc under /pacs/, as a hospital's web front end would."""

    target = ""

    def do_GET(self):
        if not self.path.startswith("/pacs/"):
            self.send_error(404)
            return
        headers = {key: value for key, value in self.headers.items() if key.lower() not in ("host", "accept-encoding")}
        answer = requests.get(self.target + self.path[len("/pacs"):], headers=headers, timeout=60)
        self.send_response(answer.status_code)
        for key, value in answer.headers.items():
            if key.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                self.send_header(key, value)
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, *args):
        pass


@needs_ohif
def test_viewer_works_behind_a_reverse_proxy_prefix(orthanc, stored_studies, browsing):
    handler = type("Proxy", (_PrefixProxy,), {"target": orthanc.url})
    proxy = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        session = browsing(orthanc)
        base = f"http://127.0.0.1:{proxy.server_address[1]}/pacs"
        responses = open_study(session, stored_studies["mr"][0], prefix=base)
        assert len(session.page.evaluate(CACHED_PIXELS)) == 1
        assert all(url.startswith(base + "/") for _, url, _, _ in responses if not url.startswith(("data:", "blob:")))
        assert not [(status, url) for status, url, _, _ in responses if not 200 <= status < 300]
    finally:
        proxy.shutdown()
        proxy.server_close()


@needs_ohif
def test_open_in_viewer_from_the_dashboard_and_orthanc_explorer(orthanc, stored_studies, browsing):
    study_uid, instance = stored_studies["ct"]
    series = orthanc.get(f"/instances/{instance}/series").json()
    study_id = series["ParentStudy"]
    session = browsing(orthanc)
    page = session.page

    page.goto("/neuronova/app/index.html")
    link = page.locator(f"tr[data-study-id='{study_id}'] a.nn-open-viewer")
    expect(link).to_have_text("Open in viewer")
    with page.expect_popup() as popup:
        link.click()
    viewer = popup.value
    viewer.wait_for_function(VIEWPORT_READY, timeout=90000)
    assert viewer.url == f"{orthanc.url}/neuronova/viewer/viewer?StudyInstanceUIDs={study_uid}"
    viewer.close()

    page.goto(f"/app/explorer.html#study?uuid={study_id}")
    with page.expect_popup() as popup:
        page.locator("#study .neuronova-viewer-open").click()
    popup.value.wait_for_url(f"{orthanc.url}/neuronova/viewer/viewer?StudyInstanceUIDs={study_uid}")
    popup.value.close()

    page.goto(f"/app/explorer.html#series?uuid={series['ID']}")
    with page.expect_popup() as popup:
        page.locator("#series .neuronova-viewer-open").click()
    popup.value.wait_for_url(f"{orthanc.url}/neuronova/viewer/viewer?StudyInstanceUIDs={study_uid}"
                             f"&initialSeriesInstanceUID={series['MainDicomTags']['SeriesInstanceUID']}")
    popup.value.wait_for_function(VIEWPORT_READY, timeout=90000)
    popup.value.close()
    expect(page.locator("#series .neuronova-upload-open")).to_have_count(1)  # the upload button is still there


def test_without_the_viewer_installed_the_plugin_works_and_says_so(browsing, tmp_path):
    empty = tmp_path / "no-ohif"
    empty.mkdir()
    server = OrthancServer(str(tmp_path / "orthanc"), {"NeuroNova": {"Viewer": {"Directory": str(empty)}}}).start()
    try:
        assert server.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"),
                           headers={"Content-Type": "application/dicom"}).json()["success"] is True
        assert "viewer unavailable: the OHIF Viewer is not installed" in server.log_text()
        page_answer = server.get("/neuronova/viewer/viewer?StudyInstanceUIDs=1.2.3")
        assert page_answer.status_code == 503 and "The viewer cannot be used" in page_answer.text
        listed = server.get("/neuronova/studies").json()
        assert listed["success"] is True and listed["viewer"]["available"] is False

        session = browsing(server)
        session.page.goto("/neuronova/app/index.html")
        expect(session.page.locator("#nn-viewer-note")).to_contain_text("The viewer is not available")
        expect(session.page.locator("#nn-studies-body tr")).to_have_count(1)
        expect(session.page.locator("a.nn-open-viewer")).to_have_count(0)
        expect(session.page.locator("a.nn-open-explorer")).to_have_count(1)
    finally:
        server.stop()


@pytest.mark.parametrize("key", ["ct", "mr", "multiframe", "rgb8"])
def test_rendered_previews_answer_for_what_the_plugin_stores(orthanc, stored_studies, key):
    """Orthanc's core reads the received files, so the DICOMweb plugin renders them (16-bit colour it
    renders for no Orthanc: 500 without the plugin too). OHIF draws its thumbnails from the frames."""
    _, instance = stored_studies[key]
    tags = orthanc.get(f"/instances/{instance}/tags?simplify").json()
    series = f"/dicom-web/studies/{tags['StudyInstanceUID']}/series/{tags['SeriesInstanceUID']}"
    for path in (f"{series}/instances/{tags['SOPInstanceUID']}/rendered", f"{series}/rendered"):
        answer = orthanc.get(path, headers={"Accept": "image/jpeg"})
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "image/jpeg", path
        assert answer.content[:2] == b"\xff\xd8"
