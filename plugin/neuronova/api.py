"""The plugin's REST routes as plain functions of a request."""

from __future__ import annotations

import datetime

from .config import Settings
from .directory import PatientDirectory, patient_from_json
from .directory.model import validate_patient_id
from .errors import BadRequest, MethodNotAllowed, NotFound, NotReady, UnsupportedMediaType
from .history import IngestHistory
from .http import (Handler, Request, Response, allow, authenticated_user, content_type, json_body, json_response,
                   query_limit, query_offset, require_content_type)
from .ingest import Ingest
from .pacs import Pacs
from .reconcile import ACTIONS, StudyOwners
from .ui import routes as ui
from .upload import UploadService
from .dicomweb.frames import WadoFrameRoutes
from .storage.background import BackgroundCompressor
from .storage.ledger import Ledger
from .viewer import Viewer
from .worklist.listing import Worklist
from .worklist.move import StudyMover
from .worklist.reverify import Reverifier
from .worklist.routes import WorklistRoutes


# A body sent without a type is accepted (curl --data-binary -H ''), never a form type a page of
# another site could send without asking (http.CROSS_SITE_FORM_TYPES).
UPLOAD_TYPES = ("application/dicom", "application/zip", "application/x-zip-compressed", "application/octet-stream", "")


class Api:
    def __init__(self, settings: Settings, directory: PatientDirectory, uploads: UploadService, pacs: Pacs,
                 ingest: Ingest, history: IngestHistory, ledger: Ledger, background: BackgroundCompressor):
        self.settings = settings
        self.directory = directory
        self.uploads = uploads
        self.pacs = pacs
        self.ingest = ingest
        self.history = history
        self.ledger = ledger
        self.background = background
        self.viewer = Viewer(settings.viewer, settings.dicomweb)
        owners = ingest.reconciler.study_owners
        self.worklist = Worklist(history, pacs, directory, owners)
        self.mover = StudyMover(pacs, directory, ingest, owners, history)
        self.reverifier = Reverifier(self.worklist, self.mover, directory, history, settings.worklist.reverify_seconds,
                                     settings.worklist.retry_seconds)
        ingest.reconciler.on_directory_state = self.reverifier.directory_state

    def routes(self) -> list[tuple[str, Handler]]:
        """(Orthanc URI regex, handler) pairs for the adapter to register, each behind the request gate:
        they may call Orthanc's REST API on loopback."""
        return [
            ("/neuronova/studies", ui.StudyList(self.pacs, self.history, viewer=self.viewer.status)),
            ("/neuronova/studies/([^/]+)/nifti", self.upload_nifti_to_study),
            ("/neuronova/patients", self.search_patients),
            ("/neuronova/patients/(.+)", self.one_patient),
            ("/neuronova/upload", self.upload),
            ("/neuronova/upload/(.+)", self.upload),
            ("/neuronova/history", self.query_history),
            *WorklistRoutes(self.worklist, self.mover, self.reverifier, self.settings.authentication).routes(),
            ("/neuronova/storage", self.storage),
            ("/neuronova/storage/compress", self.compress_existing),
            # A DICOMweb URI, for every instance: WADO-RS frames (the DICOMweb plugin keeps the rest).
            *WadoFrameRoutes(self.pacs, self.settings.dicomweb).routes(),
        ]

    def routes_without_orthanc(self) -> list[tuple[str, Handler]]:
        """Routes that never call Orthanc: no gate, so that a busy server still loads the dashboard, the
        upload dialog and the viewer (with one slot, the dialog's scripts were refused: measured)."""
        return [
            ("/neuronova/app", ui.app_redirect),
            ("/neuronova/app/(.*)", ui.StaticFiles()),
            *self.viewer.routes(),  # /neuronova/viewer/: OHIF
            ("/neuronova/ready", readiness(self.ingest.reconciler.study_owners)),
        ]

    def search_patients(self, request: Request) -> Response:
        allow(request, "GET")
        limit = query_limit(request, 50, self.settings.directory.search_max_limit)
        patients, total = self.directory.search(request.query.get("search", ""), limit)
        return json_response(200, {"success": True, "patients": [p.to_json() for p in patients], "total": total})

    def one_patient(self, request: Request) -> Response:
        allow(request, "GET", "PUT")
        patient_id = validate_patient_id(request.groups[0])
        if request.method == "GET":
            patient = self.directory.get(patient_id)
            if patient is None:
                raise NotFound(f"Patient {patient_id!r} is not known to the EMR directory")
            return json_response(200, {"success": True, "patient": patient.to_json()})
        if not self.directory.writable:
            raise MethodNotAllowed("this EMR directory is read-only: change patients in the EMR itself", ("GET",))
        patient = patient_from_json(patient_id, json_body(request))
        created = self.directory.put(patient)
        return json_response(201 if created else 200, {"success": True, "created": created, "patient": patient.to_json()})

    def upload(self, request: Request) -> Response:
        allow(request, "POST")
        if content_type(request) == "multipart/form-data":
            raise UnsupportedMediaType("multipart/form-data is not supported by Orthanc plugins: send the file as "
                                       "the raw body with Content-Type application/dicom or application/zip")
        require_content_type(request, *UPLOAD_TYPES)
        status, payload = self.uploads.upload(request.body, request.groups[0] if request.groups else None,
                                              request.headers,
                                              authenticated_user(request, self.settings.authentication))
        return json_response(status, payload)

    def upload_nifti_to_study(self, request: Request) -> Response:
        allow(request, "POST")
        require_content_type(request, *UPLOAD_TYPES)
        status, payload = self.uploads.upload_nifti_to_study(request.body, request.groups[0], request.headers)
        return json_response(status, payload)

    def query_history(self, request: Request) -> Response:
        allow(request, "GET")
        limit = query_limit(request, 100, 10000)
        action = request.query.get("action", "")
        if action and action not in ACTIONS:
            raise BadRequest(f"action: must be one of {', '.join(ACTIONS)}, got {action!r}")
        since, until = (_iso_time(request, key) for key in ("since", "until"))
        offset = query_offset(request)
        entries = self.history.query(since=since, study=request.query.get("study", ""),
                                     patient=request.query.get("patient", ""), action=action,
                                     server=request.query.get("server", ""), limit=limit, until=until,
                                     offset=offset)
        return json_response(200, {"success": True, "count": len(entries), "offset": offset, "entries": entries})

    def storage(self, request: Request) -> Response:
        """What is on disk: received and stored bytes (Orthanc's /statistics counts received sizes)."""
        allow(request, "GET")
        return json_response(200, {"success": True, "when": self.settings.storage.when,
                                   "target": self.settings.storage.pack.target, **self.ledger.totals(),
                                   "queue": self.background.backlog(), "job": self.background.job.to_json()})

    def compress_existing(self, request: Request) -> Response:
        """GET: the job's progress; POST: start compressing every plain file already stored."""
        allow(request, "GET", "POST")
        if request.method == "POST":
            started = self.background.start_adoption()
            return json_response(202 if started else 200, {"success": True, "started": started,
                                                           "job": self.background.job.to_json()})
        return json_response(200, {"success": True, "job": self.background.job.to_json()})


def readiness(owners: StudyOwners) -> Handler:
    """200 once instances are decided (a load balancer's or a script's readiness check), 503 before."""
    def ready(request: Request) -> Response:
        allow(request, "GET")
        if not owners.loaded:
            raise NotReady("NeuroNova is starting: the patients of the stored studies are being read; an "
                           "instance sent now is refused with a status its sender retries")
        return json_response(200, {"success": True, "ready": True})
    return ready


def _iso_time(request: Request, key: str) -> str:
    value = request.query.get(key, "")
    if value:
        try:
            datetime.datetime.fromisoformat(value)
        except ValueError:
            raise BadRequest(f"{key}: must be an ISO date or date-time (UTC), got {value!r}") from None
    return value
