"""Routes of the browser side: static files under /neuronova/app/, the study list, the Explorer extension.

Pure Python (no `import orthanc`): the study list reads Orthanc's built-in REST API through the Pacs
protocol, so tests can feed it fake answers.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Protocol

from ..errors import MethodNotAllowed, NeuroNovaError, NotFound
from ..http import Request, Response, json_response, query_limit
from ..pacs import Pacs
from ..viewer import viewer_path

log = logging.getLogger("neuronova.ui")

STATIC_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "static")
EXPLORER_EXTENSION = "explorer-extension.js"
INDEX = "index.html"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".txt": "text/plain; charset=utf-8",
}

STUDY_LIST_DEFAULT_LIMIT = 50
STUDY_LIST_MAX_LIMIT = 500
#: Above this many studies in the PACS, only the most recently created ones are considered for the list.
STUDY_LIST_WINDOW = 5000


def explorer_extension_js(static_dir: str = STATIC_DIR) -> str:
    """The JavaScript given to orthanc.ExtendOrthancExplorer: adds the "Upload DICOM" button."""
    with open(os.path.join(static_dir, EXPLORER_EXTENSION), encoding="utf-8") as script:
        return script.read()


class StaticFiles:
    """Serves the files found under static_dir at start, by exact relative path: nothing else is reachable."""

    def __init__(self, static_dir: str = STATIC_DIR):
        self.static_dir = static_dir
        self.files: dict[str, str] = {}
        for folder, _, names in os.walk(static_dir):
            for name in names:
                full = os.path.join(folder, name)
                relative = os.path.relpath(full, static_dir).replace(os.sep, "/")
                if os.path.splitext(name)[1].lower() in CONTENT_TYPES and not name.startswith("."):
                    self.files[relative] = full

    def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            raise MethodNotAllowed(f"method {request.method} not allowed here; use GET", ("GET",))
        name = request.groups[0] if request.groups else ""
        if name == "" or name.endswith("/"):
            name += INDEX
        path = self.files.get(name)
        if path is None:
            raise NotFound(f"no such file: {name!r}")
        with open(path, "rb") as static_file:
            body = static_file.read()
        content_type = CONTENT_TYPES[os.path.splitext(path)[1].lower()]
        # no-cache: the browser revalidates, so an upgraded plugin is picked up at once.
        return Response(200, body, content_type, {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})


_REDIRECT_PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>NeuroNova</title>
<script>location.replace((location.pathname.slice(-1) === "/" ? "" : "app/") + "index.html" + location.search);</script>
</head><body><p><a href="app/index.html">NeuroNova studies and upload</a></p></body></html>
"""


def app_redirect(request: Request) -> Response:
    """/neuronova/app and /neuronova/app/ (Orthanc drops the trailing slash before routing): send the browser
    on to app/index.html by a relative URL, which keeps a reverse proxy prefix."""
    if request.method != "GET":
        raise MethodNotAllowed(f"method {request.method} not allowed here; use GET", ("GET",))
    return Response(200, _REDIRECT_PAGE, CONTENT_TYPES[".html"], {"Cache-Control": "no-cache"})


class StudySizes(Protocol):
    def study_sizes(self, study_uids: list[str]) -> dict[str, tuple[int, int]]:
        """{StudyInstanceUID: (bytes received, bytes stored)} from the ingest history."""


class StudyList:
    """GET /neuronova/studies?limit=N: the RIS dashboard's study list, most recently received first."""

    def __init__(self, pacs: Pacs, history: StudySizes | None = None, window: int = STUDY_LIST_WINDOW,
                 viewer: Callable[[], dict] | None = None):
        self.pacs = pacs
        self.history = history
        self.window = window
        self.viewer = viewer  # the viewer's status: whether "Open in viewer" can work, else why not

    def __call__(self, request: Request) -> Response:
        if request.method != "GET":
            raise MethodNotAllowed(f"method {request.method} not allowed here; use GET", ("GET",))
        limit = query_limit(request, STUDY_LIST_DEFAULT_LIMIT, STUDY_LIST_MAX_LIMIT)
        total = int(self._get("/statistics").get("CountStudies", 0))
        if total > self.window:  # Orthanc lists in creation order: take the newest window only
            studies = self._get(f"/studies?expand&since={total - self.window}&limit={self.window}")
        else:
            studies = self._get("/studies?expand")
        studies.sort(key=_recency, reverse=True)

        rows = []
        for study in studies[:limit]:
            try:
                rows.append(self._row(study))
            except NeuroNovaError as error:  # deleted meanwhile: leave it out
                log.info("Study %s left out of the list: %s", study.get("ID"), error)
        self._add_savings(rows)
        listed = {"success": True, "studies": rows, "total": total}
        if self.viewer is not None:
            listed["viewer"] = self.viewer()
        return json_response(200, listed)

    def _get(self, uri: str):
        return json.loads(self.pacs.core_get(uri))

    def _row(self, study: dict) -> dict:
        study_id = study["ID"]
        tags = study.get("MainDicomTags", {})
        patient = study.get("PatientMainDicomTags", {})
        statistics = self._get(f"/studies/{study_id}/statistics")
        series = self._get(f"/studies/{study_id}/series")
        modalities = sorted({s.get("MainDicomTags", {}).get("Modality", "") for s in series} - {""})
        return {
            "id": study_id,
            "study_instance_uid": tags.get("StudyInstanceUID", ""),
            "patient_id": patient.get("PatientID", ""),
            "patient_name": patient.get("PatientName", ""),
            "patient_birth_date": _iso_date(patient.get("PatientBirthDate", "")),
            "study_date": _iso_date(tags.get("StudyDate", "")),
            "study_time": _iso_time(tags.get("StudyTime", "")),
            "study_description": tags.get("StudyDescription", ""),
            "accession_number": tags.get("AccessionNumber", ""),
            "modalities": modalities,
            "series_count": int(statistics.get("CountSeries", len(study.get("Series", [])))),
            "instance_count": int(statistics.get("CountInstances", 0)),
            "stored_bytes": int(statistics.get("DiskSize", 0)),
            "received_bytes": None,
            "saved_bytes": None,
            "saving_percent": None,
            "last_update": _iso_datetime(study.get("LastUpdate", "")),
            "explorer_url": f"app/explorer.html#study?uuid={study_id}",
            "viewer_url": viewer_path(tags["StudyInstanceUID"]) if tags.get("StudyInstanceUID") else None,
        }

    def _add_savings(self, rows: list[dict]) -> None:
        if self.history is None:
            return
        uids = [row["study_instance_uid"] for row in rows if row["study_instance_uid"]]
        try:
            sizes = self.history.study_sizes(uids)
        except Exception:  # the list is still worth showing without the saving column
            log.exception("Could not read study sizes from the ingest history")
            return
        for row in rows:
            received, stored = sizes.get(row["study_instance_uid"], (0, 0))
            if received > 0:  # Orthanc's DiskSize counts received sizes: the history knows what is on disk
                row["stored_bytes"] = stored
                row["received_bytes"] = received
                row["saved_bytes"] = received - stored
                row["saving_percent"] = round(100.0 * (received - stored) / received, 1)


def _recency(study: dict) -> tuple[str, str, str]:
    tags = study.get("MainDicomTags", {})
    return study.get("LastUpdate", ""), tags.get("StudyDate", ""), tags.get("StudyTime", "")


def _iso_date(value: str) -> str:
    value = value.strip()
    if len(value) == 8 and value.isdigit():
        return f"{value[:4]}-{value[4:6]}-{value[6:]}"
    return value


def _iso_time(value: str) -> str:
    digits = value.strip().split(".")[0]
    if len(digits) >= 4 and digits.isdigit():
        return ":".join(digits[i:i + 2] for i in range(0, min(len(digits), 6), 2))
    return value.strip()


def _iso_datetime(value: str) -> str:
    """Orthanc's 20240131T101530 (UTC) as 2024-01-31T10:15:30Z."""
    if len(value) == 15 and value[8] == "T":
        return f"{_iso_date(value[:8])}T{_iso_time(value[9:])}Z"
    return value
