"""/neuronova/viewer/: the OHIF Viewer, from the installed dist/ (see ohif.py), and a page saying why
when it is not installed. Pure Python: the routes are plain functions of a Request."""

from __future__ import annotations

import html
import logging
import os
import re
from urllib.parse import quote

from ..config import DicomWebSettings, ViewerSettings
from ..errors import NotFound
from ..http import Request, Response, allow
from .ohif import DEFAULT_DIST, OhifDist, ViewerMissing, app_config_js, pinned_version

log = logging.getLogger("neuronova.viewer")
EXPLORER_BUTTONS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static", "explorer-viewer.js")

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".json": "application/json",
    ".jsonc": "application/json", ".map": "application/json", ".wasm": "application/wasm",
    ".woff2": "font/woff2", ".svg": "image/svg+xml", ".png": "image/png", ".ico": "image/x-icon",
    ".xml": "application/xml", ".txt": "text/plain; charset=utf-8",
}
# Webpack's content-hashed names never change content: the browser may keep them.
_HASHED = re.compile(r"(^|[./])[0-9a-f]{16}\.(?:js|wasm|css)$")
_NOT_SERVED = frozenset({"index.html", "app-config.js", "sw.js", "init-service-worker.js", "google.js"})


def explorer_js() -> str:
    """Orthanc Explorer's "Open in viewer" buttons (study and series pages), for ExtendOrthancExplorer."""
    with open(EXPLORER_BUTTONS, encoding="utf-8") as script:
        return script.read()


def viewer_path(study_uid: str, series_uid: str = "") -> str:
    """The viewer's page for a study (and the series to show first), relative to Orthanc's root."""
    path = f"neuronova/viewer/viewer?StudyInstanceUIDs={quote(study_uid, safe='')}"
    return path + (f"&initialSeriesInstanceUID={quote(series_uid, safe='')}" if series_uid else "")


class Viewer:
    """The viewer's routes; `status` says whether it can be used and, if not, why."""

    def __init__(self, settings: ViewerSettings, dicomweb: DicomWebSettings):
        self.dist: OhifDist | None = None
        self.problem = ""
        self.pinned = pinned_version()
        self.config_js = app_config_js(dicomweb.root)
        self.files: dict[str, str] = {}
        if not settings.enabled:
            self.problem = "the viewer is turned off (NeuroNova.Viewer.Enabled is false)"
        elif not dicomweb.enabled:
            self.problem = "the viewer needs the DICOMweb plugin, which is disabled (DicomWeb.Enable is false)"
        else:
            try:
                self.dist = OhifDist.load(settings.directory or DEFAULT_DIST)
            except ViewerMissing as missing:
                self.problem = str(missing)
        if self.dist is None:
            log.warning("viewer unavailable: %s", self.problem)
            return
        self.files = _listed(self.dist.directory)
        if settings.directory == "" and self.dist.version != self.pinned:
            log.warning("viewer: @ohif/app %s is installed, the project pins %s: run `make setup`",
                        self.dist.version, self.pinned)
        log.info("viewer: OHIF Viewer %s from %s at /neuronova/viewer/ (%d files)", self.dist.version,
                 self.dist.directory, len(self.files))

    def status(self) -> dict:
        if self.dist is None:
            return {"available": False, "error": self.problem, "pinned": self.pinned}
        return {"available": True, "version": self.dist.version, "pinned": self.pinned}

    def routes(self) -> list[tuple[str, object]]:
        return [("/neuronova/viewer", self.root), ("/neuronova/viewer/(.*)", self.serve)]

    def root(self, request: Request) -> Response:
        """/neuronova/viewer and /neuronova/viewer/ (Orthanc drops the trailing slash before routing)."""
        allow(request, "GET")
        if self.dist is None:
            return self._missing_page()
        return _page(200, "NeuroNova viewer", "뷰어", (
            f"<p>OHIF Viewer {html.escape(self.dist.version)}. Open a study from the "
            f'<a id="nn-study-list" href="">study list</a>.</p>'
            f"<p lang=\"ko\">OHIF 뷰어 {html.escape(self.dist.version)}. "
            f'<a href="">검사 목록</a>에서 검사를 여십시오.</p>'))

    def serve(self, request: Request) -> Response:
        allow(request, "GET")
        name = request.groups[0] if request.groups else ""
        if name in ("", "index.html"):
            return self.root(request)
        if self.dist is None:
            if _is_page(name):
                return self._missing_page()
            raise NotFound(f"the viewer is not available: {self.problem}")
        if name == "app-config.js":
            return Response(200, self.config_js, CONTENT_TYPES[".js"], {"Cache-Control": "no-cache"})
        path = self.files.get(name)
        if path is not None:
            cache = "public, max-age=31536000, immutable" if _HASHED.search(name) else "no-cache"
            return Response(200, self.dist.file(path), CONTENT_TYPES[os.path.splitext(name)[1].lower()],
                            {"Cache-Control": cache, "X-Content-Type-Options": "nosniff"})
        if _is_page(name):  # one of OHIF's own routes (viewer, viewer/dicomweb...): its single page
            return Response(200, self.dist.index_for(name.count("/")), CONTENT_TYPES[".html"],
                            {"Cache-Control": "no-cache"})
        raise NotFound(f"no such file in the viewer: {name!r}")

    def _missing_page(self) -> Response:
        problem = html.escape(self.problem)
        return _page(503, "NeuroNova viewer: not available", "뷰어를 사용할 수 없음", (
            f'<p id="nn-viewer-problem">The viewer cannot be used: {problem}.</p>'
            "<p>Everything else (upload, study list, Orthanc Explorer, DICOMweb) works as usual.</p>"
            f'<p lang="ko">뷰어를 사용할 수 없습니다: {problem}. 업로드, 검사 목록, Orthanc Explorer, DICOMweb은 '
            "정상적으로 작동합니다.</p>"))


def _is_page(name: str) -> bool:
    """An OHIF route (a path without a file extension), as opposed to a missing file."""
    return "." not in name.rsplit("/", 1)[-1]


def _listed(directory: str) -> dict[str, str]:
    """Every servable file of the dist/, by its path relative to it: nothing else can be reached."""
    files = {}
    for folder, _, names in os.walk(directory):
        for file_name in names:
            full = os.path.join(folder, file_name)
            relative = os.path.relpath(full, directory).replace(os.sep, "/")
            if (os.path.splitext(file_name)[1].lower() in CONTENT_TYPES and not file_name.startswith(".")
                    and relative not in _NOT_SERVED):
                files[relative] = full
    return files


def _page(status: int, title: str, korean_title: str, body: str) -> Response:
    """A small bilingual page; its links go to the study list."""
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:50em}}</style></head>
<body><h1>{html.escape(title)} <span lang="ko">/ {html.escape(korean_title)}</span></h1>{body}
<script>document.querySelectorAll("a").forEach(function (a) {{  // behind any reverse-proxy prefix
  var path = location.pathname;
  a.href = path.slice(0, path.lastIndexOf("/neuronova/viewer")) + "/neuronova/app/index.html";
}});</script></body></html>
"""
    return Response(status, page.encode("utf-8"), CONTENT_TYPES[".html"], {"Cache-Control": "no-cache"})
