"""The RIS dashboard's storage panel in a real browser (headless Debian Chromium) on a real Orthanc:
the sizes received and on disk, and the "Compress existing storage" job from the click to "done"."""

import os
import re

import requests
from playwright.sync_api import expect

from support.dicom_files import make_series, read_bytes
from support.servers import OrthancServer

PLAIN_FILES = 12  # compressed by the job at 2 files a second: about 6 s, three polls of the page
SLOW_JOB = {"NeuroNova": {"Transcoding": {"Background": {"MaxFilesPerSecond": 2}}}}


def storage(server) -> dict:
    answer = server.get("/neuronova/storage").json()
    assert answer["success"] is True, answer
    return answer


def attachment_files(server) -> int:
    """Files in Orthanc's storage layout (ab/cd/uuid): what the job goes through."""
    root = server.config["StorageDirectory"]
    hex_dir = re.compile(r"^[0-9a-f]{2}$")
    return sum(len([name for name in files if not name.endswith(".tmp")])
               for folder, _, files in os.walk(root)
               if os.path.relpath(folder, root).count(os.sep) == 1
               and all(hex_dir.match(part) for part in os.path.relpath(folder, root).split(os.sep)))


def format_bytes(page, count: int) -> str:
    """The page's own formatting, so the figures compare exactly."""
    return page.evaluate("count => window.NeuroNovaUpload.formatBytes(count)", count)


def expect_figures(page, answer: dict) -> None:
    expect(page.locator("#nn-storage-received")).to_have_text(format_bytes(page, answer["received_bytes"]))
    expect(page.locator("#nn-storage-stored")).to_have_text(format_bytes(page, answer["stored_bytes"]))
    expect(page.locator("#nn-storage-saved")).to_have_text(
        f"{format_bytes(page, answer['saved_bytes'])} ({answer['saving_percent']}%)")


def test_compress_existing_storage_from_the_dashboard(browsing, tmp_path):
    data_dir = str(tmp_path / "orthanc")
    # A PACS as it was before the plugin: Orthanc's own storage, files as received.
    plain = OrthancServer(data_dir, plugin=False).start()
    try:
        paths = []
        for base in ("CT_small.dcm", "MR_small.dcm"):  # two studies
            folder = tmp_path / base
            folder.mkdir()
            paths += make_series(folder, PLAIN_FILES // 2, base)
        for path in paths:
            with open(path, "rb") as dicom:
                assert plain.post("/instances", data=dicom.read()).ok
        assert len(plain.instances()) == PLAIN_FILES
    finally:
        plain.stop()

    server = OrthancServer(data_dir, SLOW_JOB).start()
    try:
        # One more instance through the plugin: compressed at ingest, so the figures start above zero.
        assert server.post("/instances", data=read_bytes("CT_small.dcm")).ok
        before = storage(server)
        # The plain DICOM files, the one compressed at ingest, and Orthanc's "dicom-until-pixel-data"
        # attachment of that one (the plugin's storage reads no ranges; not an instance: kept as received).
        files = attachment_files(server)
        assert files >= PLAIN_FILES + 1
        assert before["compressed_files"] == 1 and before["plain_files"] == 0, before
        assert before["job"]["state"] == "idle"

        session = browsing(server)
        page = session.page
        page.goto("/neuronova/app/index.html")
        panel = page.locator("#nn-storage")
        expect(panel.get_by_role("heading", name="Storage")).to_be_visible()
        expect_figures(page, before)
        expect(page.locator("#nn-storage-saved")).to_have_class("nn-saving")
        expect(page.locator("#nn-storage-files")).to_have_text(
            "1 file compressed, 0 as received \u00b7 compression at ingest")
        expect(page.locator("#nn-storage-untracked")).to_have_text(
            f'{PLAIN_FILES} instances stored before the plugin are not counted yet: '
            '"Compress existing storage" takes them in.')
        expect(page.locator("#nn-storage-job")).to_be_hidden()
        # The panel sits above the study list.
        assert panel.bounding_box()["y"] < page.locator("#nn-studies").bounding_box()["y"]

        # The click POSTs the job's relative URL; the page then polls while the job runs.
        button = panel.get_by_role("button", name="Compress existing storage")
        with page.expect_request(lambda request: request.method == "POST"
                                 and request.url == server.url + "/neuronova/storage/compress") as posted:
            button.click()
        assert posted.value.response().status == 202
        expect(button).to_be_disabled()
        expect(page.locator("#nn-storage-untracked")).to_be_hidden()
        progress = page.locator("#nn-storage-progress")
        expect(progress).to_be_visible()
        # A poll while the job is under way: the bar part-way, the counts so far.
        page.wait_for_function("""() => {
            const bar = document.querySelector('#nn-storage-progress');
            return bar.offsetParent !== null && +bar.getAttribute('aria-valuenow') > 0
                && +bar.getAttribute('aria-valuenow') < 100;
        }""", timeout=30000)
        expect(page.locator("#nn-storage-job-text")).to_have_text(re.compile(
            rf"^Compressing the existing storage: \d+ of {files} files scanned, \d+ compressed, "
            r"(1 already compressed, )?\d+ kept as received, 0 failed( \u00b7 [0-9.]+ files/s)?$"))
        expect(progress.locator(".nn-progress-label")).to_have_text(re.compile(r"^[0-9.]+%$"))
        session.screenshot("storage-panel.png", height=260)

        # Done: the counts, and the figures updated (on disk now smaller than received).
        done = page.locator("#nn-storage-done")
        expect(done).to_be_visible(timeout=60000)
        after = storage(server)
        job = after["job"]
        assert job["state"] == "done" and job["compressed"] == PLAIN_FILES and job["already"] == 1, job
        assert job["failed"] == 0 and job["scanned"] == job["total"] == files, job
        expect(done).to_have_text(re.compile(
            rf"^Compression of the existing storage done \(.+\): {files} files scanned, "
            rf"{PLAIN_FILES} compressed, 1 already compressed, {files - PLAIN_FILES - 1} kept as received, "
            r"0 failed\.$"))
        expect(done).to_have_css("color", "rgb(29, 94, 29)")
        expect(progress).to_be_hidden()
        expect(button).to_be_enabled()
        expect(page.locator("#nn-storage-error")).to_be_hidden()
        assert after["compressed_files"] == PLAIN_FILES + 1, after
        assert 0 < after["stored_bytes"] < after["received_bytes"], after
        expect_figures(page, after)
        expect(page.locator("#nn-storage-files")).to_have_text(
            f"{PLAIN_FILES + 1} files compressed, {after['plain_files']} as received \u00b7 compression at ingest")
        expect(page.locator("#nn-storage-untracked")).to_be_hidden()
        # The study list behind refreshed by itself, with the sizes now on disk.
        expect(page.locator("#nn-studies-body tr[data-study-id]")).to_have_count(3)
        assert server.alive()
    finally:
        server.stop()


def test_errors_show_the_servers_text_or_the_http_status(pacs, browsing):
    session = browsing(pacs)
    page = session.page
    page.goto("/neuronova/app/index.html")
    expect(page.locator("#nn-storage-received")).not_to_have_text("-")
    button = page.get_by_role("button", name="Compress existing storage")
    error = page.locator("#nn-storage-error")

    # The server's own `error` text (here a proxy refusing the POST with the plugin's JSON shape).
    page.route("**/neuronova/storage/compress", lambda route: route.fulfill(
        status=403, content_type="application/json",
        body='{"success": false, "error": "compression is switched off here"}'))
    button.click()
    expect(error).to_have_text(
        "Could not start the compression of the existing storage: compression is switched off here")
    expect(error).to_have_css("color", "rgb(138, 16, 16)")
    expect(button).to_be_enabled()

    # No JSON at all (a gateway error page): the HTTP status.
    page.unroute("**/neuronova/storage/compress")
    page.route("**/neuronova/storage/compress", lambda route: route.fulfill(
        status=502, content_type="text/html", body="<h1>Bad Gateway</h1>"))
    button.click()
    expect(error).to_have_text("Could not start the compression of the existing storage: HTTP 502")

    # The figures themselves failing to load.
    page.route("**/neuronova/storage", lambda route: route.fulfill(status=500, body="boom"))
    page.get_by_role("button", name="Refresh").click()
    expect(error).to_have_text("Could not load the storage figures: HTTP 500")
    page.unroute("**/neuronova/storage")
    page.get_by_role("button", name="Refresh").click()
    expect(error).to_be_hidden()
    assert requests.get(pacs.url + "/neuronova/storage", timeout=10).json()["job"]["state"] == "idle"
