"""Browser fixtures: Debian's Chromium driven by pip playwright (never `playwright install`), and a real
Orthanc with the plugin. Screenshots go to the test's tmp folder, and to $NEURONOVA_SCREENSHOTS when set
(scripts/screenshots.py sets it to docs/screenshots)."""

from __future__ import annotations

import os

import pytest

from support.dicom_files import read_bytes, tiny_jpeg
from support.servers import OrthancServer, OrthancWithLogin

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
VIEWPORT = {"width": 1280, "height": 860}


@pytest.fixture(scope="session")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (scripts/install-system-packages.sh)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class Browsing:
    """One browser context on one Orthanc; JavaScript exceptions fail the test."""

    def __init__(self, browser, base_url: str, screenshot_dir: str, **context_options):
        self.context = browser.new_context(viewport=VIEWPORT, base_url=base_url, **context_options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(20000)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.screenshot_dir = screenshot_dir
        self.cdp = None

    def screenshot(self, name: str, height: int | None = None) -> None:
        path = os.path.join(self.screenshot_dir, name)
        self.page.screenshot(path=path, clip={"x": 0, "y": 0, "width": VIEWPORT["width"], "height": height}
                             if height else None)
        published = os.environ.get("NEURONOVA_SCREENSHOTS")
        if published:  # committed to the repository: 256 colours keep them small
            from PIL import Image

            os.makedirs(published, exist_ok=True)
            with Image.open(path) as image:
                image.convert("RGB").quantize(256).save(os.path.join(published, name), optimize=True)

    def throttle_uploads(self, bytes_per_second: int | None) -> None:
        """Slow the network's upload side (Chrome DevTools protocol), to watch progress or cancel."""
        if self.cdp is None:  # one session: conditions set by one session are not undone by another
            self.cdp = self.context.new_cdp_session(self.page)
            self.cdp.send("Network.enable")
        self.cdp.send("Network.emulateNetworkConditions", {
            "offline": False, "latency": 0, "downloadThroughput": -1,
            "uploadThroughput": bytes_per_second if bytes_per_second else -1})

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def browsing(browser, tmp_path):
    opened = []

    def open_browsing(server: OrthancServer, **context_options) -> Browsing:
        session = Browsing(browser, server.url, str(tmp_path), **context_options)
        opened.append(session)
        return session

    yield open_browsing
    errors = [error for session in opened for error in session.errors]
    for session in opened:
        session.close()
    assert not errors, f"JavaScript errors in the page: {errors}"


@pytest.fixture
def files(tmp_path):
    """Real DICOM files (pydicom test data) and a JPEG, on disk as a user would pick them."""
    folder = tmp_path / "files"
    folder.mkdir()
    paths = {}
    for name, data in {"CT_small.dcm": read_bytes("CT_small.dcm"), "MR_small.dcm": read_bytes("MR_small.dcm"),
                       "photo.jpg": tiny_jpeg()}.items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


@pytest.fixture(scope="module")
def orthanc_with_login(tmp_path_factory):
    server = OrthancWithLogin(str(tmp_path_factory.mktemp("orthanc-login"))).start()
    yield server
    server.stop()
