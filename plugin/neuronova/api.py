"""The plugin's REST routes as plain functions of a request, and the one place errors become answers."""

from __future__ import annotations

import datetime
import json
import logging
from urllib.parse import quote
from dataclasses import dataclass, field
from typing import Callable

from .config import Settings
from .directory import PatientDirectory, patient_from_json
from .directory.model import validate_patient_id
from .errors import BadRequest, MethodNotAllowed, NeuroNovaError, NotFound
from .history import IngestHistory
from .ingest import Ingest
from .pacs import Pacs
from .reconcile import ACTIONS
from .upload import UploadService

log = logging.getLogger("neuronova.api")


@dataclass(frozen=True)
class Request:
    method: str
    uri: str = ""
    groups: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: dict, **headers: str) -> Response:
    return Response(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers=headers)


def error_response(error: NeuroNovaError) -> Response:
    headers = {"Allow": ", ".join(error.allow)} if isinstance(error, MethodNotAllowed) else {}
    return json_response(error.http_status, {"success": False, "error": str(error)}, **headers)


Handler = Callable[[Request], Response]


def answer(handler: Handler, request: Request) -> Response:
    """Run a route; every exception becomes a JSON error answer here and nowhere else."""
    try:
        return handler(request)
    except NeuroNovaError as error:
        log.info("%s answered %d: %s", request.method, error.http_status, error)
        return error_response(error)
    except Exception as error:  # a bug: answer clearly instead of Orthanc's bare 500
        log.exception("Unexpected error in a NeuroNova route")
        return json_response(500, {"success": False, "error": f"internal error: {type(error).__name__}: {error}"})


def _limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit: must be an integer between 1 and {maximum}, got {raw!r}") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit: must be an integer between 1 and {maximum}, got {limit}")
    return limit


def _allow(request: Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"method {request.method} not allowed here; use {' or '.join(methods)}", methods)


class Api:
    def __init__(self, settings: Settings, directory: PatientDirectory, uploads: UploadService, pacs: Pacs,
                 ingest: Ingest, history: IngestHistory):
        self.settings = settings
        self.directory = directory
        self.uploads = uploads
        self.pacs = pacs
        self.ingest = ingest
        self.history = history

    def routes(self) -> list[tuple[str, Handler]]:
        """(Orthanc URI regex, handler) pairs for the adapter to register."""
        from .ui import routes as ui  # the ui module builds on this one: imported late
        from .images import ImageRoutes  # likewise
        from .egress import EgressRoutes  # likewise
        return [
            ("/neuronova/app", ui.app_redirect),
            ("/neuronova/app/(.*)", ui.StaticFiles()),
            ("/neuronova/studies", ui.StudyList(self.pacs, self.history)),
            ("/neuronova/patients", self.search_patients),
            ("/neuronova/patients/(.+)", self.one_patient),
            ("/neuronova/upload", self.upload),
            ("/neuronova/upload/(.+)", self.upload),
            ("/neuronova/history", self.query_history),
            *EgressRoutes(self.pacs).routes(),  # /neuronova/instances/{id}/uncompressed
            # Core URIs: the plugin answers for HTJ2K instances and hands every other one back to Orthanc.
            *ImageRoutes(self.pacs).routes(),  # preview, rendered, image-uint8/-uint16/-int16
            ("/instances", self.instances),
        ]

    def search_patients(self, request: Request) -> Response:
        _allow(request, "GET")
        limit = _limit(request, 50, self.settings.directory.search_max_limit)
        patients, total = self.directory.search(request.query.get("search", ""), limit)
        return json_response(200, {"success": True, "patients": [p.to_json() for p in patients], "total": total})

    def one_patient(self, request: Request) -> Response:
        _allow(request, "GET", "PUT")
        patient_id = validate_patient_id(request.groups[0])
        if request.method == "GET":
            patient = self.directory.get(patient_id)
            if patient is None:
                raise NotFound(f"Patient {patient_id!r} is not known to the EMR directory")
            return json_response(200, {"success": True, "patient": patient.to_json()})
        if not self.directory.writable:
            raise MethodNotAllowed("this EMR directory is read-only: change patients in the EMR itself", ("GET",))
        try:
            payload = json.loads(request.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise BadRequest(f"body: must be JSON: {error}") from None
        patient = patient_from_json(patient_id, payload)
        created = self.directory.put(patient)
        return json_response(201 if created else 200, {"success": True, "created": created, "patient": patient.to_json()})

    def upload(self, request: Request) -> Response:
        _allow(request, "POST")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type == "multipart/form-data":
            raise BadRequest("multipart/form-data is not supported by Orthanc plugins: send the file as the raw "
                             "body with Content-Type application/dicom or application/zip")
        status, payload = self.uploads.upload(request.body, request.groups[0] if request.groups else None)
        return json_response(status, payload)

    def query_history(self, request: Request) -> Response:
        _allow(request, "GET")
        limit = _limit(request, 100, 10000)
        action = request.query.get("action", "")
        if action and action not in ACTIONS:
            raise BadRequest(f"action: must be one of {', '.join(ACTIONS)}, got {action!r}")
        since = request.query.get("since", "")
        if since:
            try:
                datetime.datetime.fromisoformat(since)
            except ValueError:
                raise BadRequest(f"since: must be an ISO date or date-time (UTC), got {since!r}") from None
        entries = self.history.query(since=since, study=request.query.get("study", ""),
                                     patient=request.query.get("patient", ""), action=action, limit=limit)
        return json_response(200, {"success": True, "count": len(entries), "entries": entries})

    def instances(self, request: Request) -> Response:
        """POST /instances runs the ingest pipeline in this REST thread (in parallel, unlike Orthanc's
        received-instance callback); GET is Orthanc's own answer."""
        _allow(request, "GET", "POST")
        if request.method == "GET":
            # A flag without value (?expand) must be spelt out for Orthanc's in-process API.
            query = "&".join(f"{quote(k)}={quote(v) if v else 'true'}" for k, v in request.query.items())
            return Response(200, self.pacs.core_get("/instances" + ("?" + query if query else "")))
        if request.body.startswith(b"PK\x03\x04"):  # Orthanc unpacks ZIP bodies itself
            return Response(200, json.dumps(self.pacs.store(request.body)).encode())
        answer, _ = self.ingest.store(request.body, "rest", self.pacs.store)
        return json_response(200, answer)
