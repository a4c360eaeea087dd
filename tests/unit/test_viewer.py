"""The viewer's routes without Orthanc, on a small fake OHIF dist/ shaped like @ohif/app 3.13's."""

from __future__ import annotations

import json
import re

import pytest
from neuronova.config import (
    ConfigError,
    DicomWebSettings,
    ViewerSettings,
    load_settings,
)
from neuronova.http import Request, answer
from neuronova.viewer import Viewer, viewer_path
from neuronova.viewer.ohif import app_config_js

INDEX = ('<!doctype html><html lang="en"><head><meta charset="UTF-8">'
         '<meta name="msapplication-TileImage" content="/assets/mstile-144x144.png">'
         '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script><link rel="manifest" href="/manifest.json">'
         '<link rel="icon shortcut" href="/assets/favicon.ico">'
         '<link rel="apple-touch-icon" sizes="57x57" href="/assets/apple-touch-icon-57x57.png">'
         '<script rel="preload" as="script" src="/app-config.js"></script>'
         '<script rel="preload" as="script" type="module" src="/init-service-worker.js"></script>'
         '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
         '<script defer src="/app.bundle.0f6159c501addfe9.js"></script><link href="/app.bundle.css" rel="stylesheet">'
         '</head><body><div id="root"></div></body></html>')


@pytest.fixture
def dist(tmp_path):
    folder = tmp_path / "app" / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text(INDEX)
    (folder / "app-config.js").write_text("window.config = {dataSources: ['a public demo server']};")
    (folder / "app.bundle.0f6159c501addfe9.js").write_text('(() => {\n__webpack_require__.p = "/";\n})();')
    (folder / "app.bundle.css").write_text("@font-face{src:url(/a34f9d1faa5f3315.woff2)}a{b:url(//x/y)}")
    (folder / "37fa160cc3a47cfd.wasm").write_bytes(b"\0asm")
    (folder / "assets" / "favicon.ico").write_bytes(b"ico")
    (folder / "sw.js").write_text("self.addEventListener('install', () => {});")
    (tmp_path / "app" / "package.json").write_text(json.dumps({"name": "@ohif/app", "version": "3.13.2"}))
    return folder


def viewer(dist_dir, **settings) -> Viewer:
    return Viewer(ViewerSettings(directory=str(dist_dir), **settings), DicomWebSettings())


def get(handler, *groups):
    return answer(handler, Request(method="GET", uri="/neuronova/viewer", groups=groups))


@pytest.mark.parametrize("page, base", [("viewer", "./"), ("viewer/dicomweb", "../"), ("a/b/c", "../../")])
def test_ohif_routes_answer_its_page_based_on_the_viewer_root(dist, page, base):
    response = get(viewer(dist).serve, page)
    assert response.status == 200 and response.content_type.startswith("text/html")
    html = response.body.decode()
    assert f'<head><base href="{base}">' in html
    assert 'window.PUBLIC_URL="/"' not in html and html.count("window.PUBLIC_URL=new URL(document.baseURI).pathname") == 2
    assert re.findall(r'(?:src|href)="([^"]*)"', html) == [base, "assets/favicon.ico", "app-config.js",
                                                            "app.bundle.0f6159c501addfe9.js", "app.bundle.css"]
    assert "manifest" not in html and "service-worker" not in html and "msapplication" not in html


def test_the_app_config_is_the_plugins_own(dist):
    response = get(viewer(dist).serve, "app-config.js")
    assert response.status == 200 and b"public demo server" not in response.body
    config = json.loads(response.body.decode().split("window.config = ", 1)[1].rstrip(";\n"))
    assert config["showStudyList"] is False
    source = config["dataSources"][0]["configuration"]
    assert source["wadoRoot"] == source["qidoRoot"] == source["wadoUriRoot"] == "../../dicom-web"
    assert source["acceptHeader"] == ["multipart/related; type=application/octet-stream; transfer-syntax=*"]
    assert config["customizationService"] == [{"ohif.tours": {"$set": []}}]


def test_the_dicomweb_root_follows_orthancs_configuration():
    assert '"wadoRoot": "../../pacs/dicomweb"' in app_config_js("/pacs/dicomweb/").decode()


def test_webpack_entries_and_style_sheets_find_their_files_from_their_own_url(dist):
    bundle = get(viewer(dist).serve, "app.bundle.0f6159c501addfe9.js")
    assert b'__webpack_require__.p = "/";' not in bundle.body
    assert b'__webpack_require__.p = new URL("./", ' in bundle.body
    assert bundle.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    css = get(viewer(dist).serve, "app.bundle.css")
    assert css.body == b"@font-face{src:url(a34f9d1faa5f3315.woff2)}a{b:url(//x/y)}"
    assert css.headers["Cache-Control"] == "no-cache"
    wasm = get(viewer(dist).serve, "37fa160cc3a47cfd.wasm")
    assert wasm.content_type == "application/wasm" and wasm.body == b"\0asm"


@pytest.mark.parametrize("name", ["sw.js", "../package.json", "assets/../../package.json", "nope.js", "x.wasm"])
def test_only_the_dists_files_and_no_service_worker(dist, name):
    assert get(viewer(dist).serve, name).status == 404


def test_root_page_names_the_version(dist):
    served = viewer(dist)
    assert served.status() == {"available": True, "version": "3.13.2", "pinned": "3.13.2"}
    for handler, groups in ((served.root, ()), (served.serve, ("",)), (served.serve, ("index.html",))):
        response = get(handler, *groups)
        assert response.status == 200 and b"OHIF Viewer 3.13.2" in response.body


def test_a_missing_viewer_is_said_on_its_pages_and_in_its_status(tmp_path, caplog):
    served = viewer(tmp_path / "nothing")
    assert served.status()["available"] is False
    assert "the OHIF Viewer is not installed" in served.status()["error"]
    assert "viewer unavailable: the OHIF Viewer is not installed" in caplog.text
    for groups in (("viewer",), ("",)):
        response = get(served.serve, *groups)
        assert response.status == 503 and b"The viewer cannot be used" in response.body
        assert "뷰어를 사용할 수 없습니다".encode() in response.body
    assert get(served.serve, "app.bundle.js").status == 404


def test_a_dist_that_is_not_ohif_3_for_the_site_root_is_refused(dist):
    (dist / "index.html").write_text("<html><head></head></html>")
    assert "is not an OHIF Viewer 3 build" in viewer(dist).status()["error"]


def test_viewer_turned_off(dist):
    assert "NeuroNova.Viewer.Enabled is false" in viewer(dist, enabled=False).status()["error"]


def test_viewer_settings_are_checked():
    assert load_settings({}).viewer == ViewerSettings(enabled=True, directory="")
    assert load_settings({"NeuroNova": {"Viewer": {"Enabled": False}}}).viewer.enabled is False
    with pytest.raises(ConfigError, match="NeuroNova.Viewer.Enabled: must be bool"):
        load_settings({"NeuroNova": {"Viewer": {"Enabled": "yes"}}})
    with pytest.raises(ConfigError, match="NeuroNova.Viewer.Url: unknown configuration key"):
        load_settings({"NeuroNova": {"Viewer": {"Url": "x"}}})


def test_viewer_path_quotes_the_uids():
    assert viewer_path("1.2.3") == "neuronova/viewer/viewer?StudyInstanceUIDs=1.2.3"
    assert viewer_path("1.2", "1.2.4") == "neuronova/viewer/viewer?StudyInstanceUIDs=1.2&initialSeriesInstanceUID=1.2.4"
    assert viewer_path("1.2&x=<y>") == "neuronova/viewer/viewer?StudyInstanceUIDs=1.2%26x%3D%3Cy%3E"
