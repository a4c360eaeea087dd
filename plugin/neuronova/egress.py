"""What leaves the PACS: uncompressed downloads, /modalities/{id}/store and C-MOVE.

Orthanc 1.10 cannot send HTJ2K (DCMTK 3.6.7 does not know it and no plugin decodes it), so:

* ``POST /modalities/{id}/store`` (a plugin route on the core URI): a request without HTJ2K
  instances is handed to Orthanc unchanged (same body, same answer, jobs included). Otherwise the
  HTJ2K instances go through dicom_sender (HTJ2K untouched to a peer that accepts it, else JPEG
  2000 lossless or uncompressed) and every other instance through Orthanc's own store, in one
  answer shaped like Orthanc's, with per-instance outcomes under "NeuroNova"; asynchronous
  requests get a job answered under ``GET /jobs/{id}`` in Orthanc's format (StoreJobs).
* C-MOVE: a plugin move handler replaces Orthanc's C-MOVE SCP for every request, so it resolves
  the request like Orthanc (level, UIDs, PatientID, AccessionNumber), finds the destination among
  Orthanc's modalities by AET and performs the same store, move originator passed on.
"""

from __future__ import annotations

import datetime
import json
import logging
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from urllib.parse import quote

from . import dicom_sender
from .http import Request, Response, allow, json_response
from .errors import BadRequest, NeuroNovaError, NotFound
from .pacs import Pacs
from .rendering import HTJ2K_SYNTAXES
from .uncompressed import to_explicit_little_endian

log = logging.getLogger("neuronova.egress")

ORTHANC_ID = re.compile(r"^[0-9a-f]{8}(-[0-9a-f]{8}){4}$")
DEFAULT_TIMEOUT = 30.0
LEVELS = ("instances", "series", "studies", "patients")


class EgressFailed(NeuroNovaError):
    """Some instances could not be delivered (Orthanc answers 500, "Error in the network protocol")."""

    http_status = 500


@dataclass
class StoreRequest:
    """The body of POST /modalities/{id}/store, read as Orthanc reads it."""

    resources: list[str]
    options: dict = field(default_factory=dict)
    raw: bytes = b""

    @classmethod
    def parse(cls, body: bytes) -> "StoreRequest":
        text = body.decode("utf-8", "replace").strip()
        if ORTHANC_ID.match(text):  # Orthanc takes a bare identifier as well
            return cls([text], {}, body)
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            raise BadRequest("body: must provide a JSON value (an identifier, a list of them, or an object "
                             "with \"Resources\")") from None
        if isinstance(value, str):
            return cls([value], {}, body)
        if isinstance(value, list):
            return cls([str(item) for item in value], {}, body)
        if isinstance(value, dict) and isinstance(value.get("Resources"), list):
            return cls([str(item) for item in value["Resources"]], value, body)
        raise BadRequest("body: expected an identifier, a list of identifiers or {\"Resources\": [...]}")

    @property
    def permissive(self) -> bool:
        return bool(self.options.get("Permissive", False))

    @property
    def asynchronous(self) -> bool:
        """Orthanc: "Asynchronous": true, or "Synchronous": false."""
        return bool(self.options.get("Asynchronous", False)) or self.options.get("Synchronous", True) is False

    @property
    def originator(self) -> tuple[str, int] | None:
        aet = self.options.get("MoveOriginatorAet")
        return (str(aet), int(self.options.get("MoveOriginatorID", 0) or 0)) if aet else None


class Egress:
    def __init__(self, pacs: Pacs, prefer_j2k: bool = True, sender=dicom_sender.send):
        self.pacs = pacs
        self.prefer_j2k = prefer_j2k
        self.sender = sender

    # -- REST: POST /modalities/{id}/store ---------------------------------------------------

    def needs_plugin(self, modality: str, request: StoreRequest) -> bool:
        """Whether the request includes HTJ2K instances (checks the modality and resources first)."""
        self.pacs.core_get(f"/modalities/{quote(modality, safe='')}/configuration")
        return any(item.transfer_syntax in HTJ2K_SYNTAXES for item in self._instances(request.resources))

    def store(self, modality: str, request: StoreRequest) -> tuple[int, bytes]:
        """(HTTP status, JSON body) of a store to one of Orthanc's modalities."""
        uri = f"/modalities/{quote(modality, safe='')}/store"
        configuration = json.loads(self.pacs.core_get(f"/modalities/{quote(modality, safe='')}/configuration"))
        instances = self._instances(request.resources)
        htj2k = [item for item in instances if item.transfer_syntax in HTJ2K_SYNTAXES]
        if not htj2k:  # nothing Orthanc cannot send: Orthanc's own answer, jobs and all
            return 200, self.pacs.core_post(uri, request.raw or json.dumps({"Resources": request.resources}).encode())
        others = [item.instance_id for item in instances if item.transfer_syntax not in HTJ2K_SYNTAXES]
        # Orthanc's precedence: the request's LocalAet, the modality's, then DicomAet
        local_aet = (request.options.get("LocalAet") or configuration.get("LocalAet")
                     or json.loads(self.pacs.core_get("/system"))["DicomAet"])
        peer = dicom_sender.Peer.from_orthanc(configuration, local_aet,
                                              float(request.options.get("Timeout") or DEFAULT_TIMEOUT))
        outcomes = self.sender(peer, htj2k, request.originator, self.prefer_j2k)
        failed = sum(not outcome.ok for outcome in outcomes)
        orthanc_error = ""
        if others:
            # Never permissive: Orthanc 1.10.1's permissive store answers FailedInstancesCount 0 even when
            # an instance failed (measured); a failure of Orthanc's part counts all of its instances.
            body = {key: value for key, value in request.options.items()
                    if key not in ("Resources", "Asynchronous", "Synchronous", "Permissive")}
            body.update(Resources=others, Synchronous=True)
            try:
                answer = json.loads(self.pacs.core_post(uri, json.dumps(body).encode()))
                failed += int(answer.get("FailedInstancesCount", 0) or 0)
            except NeuroNovaError as error:
                failed += len(others)
                orthanc_error = str(error)
        payload = {"Description": "REST API", "FailedInstancesCount": failed, "InstancesCount": len(instances),
                   "LocalAet": peer.local_aet, "ParentResources": request.resources, "RemoteAet": peer.aet,
                   "NeuroNova": {"Instances": [outcome.to_json() for outcome in outcomes],
                                 "SentByOrthanc": len(others), **({"OrthancError": orthanc_error} if orthanc_error else {})}}
        if failed and not request.permissive:
            details = "; ".join(f"{o.instance_id}: {o.error}" for o in outcomes if not o.ok) or orthanc_error
            payload.update(HttpError="Internal Server Error", HttpStatus=500, Message="Error in the network protocol",
                           OrthancError="Error in the network protocol", OrthancStatus=9, Method="POST", Uri=uri,
                           Details=f"C-STORE to AET \"{peer.aet}\": {failed} of {len(instances)} instance(s) "
                                   f"failed: {details}")
            return 500, json.dumps(payload).encode()
        return 200, json.dumps(payload).encode()

    # -- C-MOVE -------------------------------------------------------------------------------

    def move(self, **request) -> None:
        """orthanc.RegisterMoveCallback handler (plugin 4.0 keywords); raises on failure (C-MOVE failure)."""
        target = request.get("TargetAET", "")
        modality = self._modality_for(target)
        resources = self._resolve_move(request)
        if not resources:
            raise NotFound(f"C-MOVE from {request.get('OriginatorAET', '?')}: nothing matches "
                           f"{request.get('Level')} {_move_keys(request)}")
        options = {"Resources": resources, "Synchronous": True}
        if request.get("OriginatorAET"):
            options.update(MoveOriginatorAet=request["OriginatorAET"], MoveOriginatorID=int(request.get("OriginatorID", 0)))
        status, body = self.store(modality, StoreRequest(resources, options, json.dumps(options).encode()))
        answer = json.loads(body)
        log.info("C-MOVE %s %s to %s: %s instance(s), %s failed", request.get("Level"), _move_keys(request), target,
                 answer.get("InstancesCount", "?"), answer.get("FailedInstancesCount", 0))
        if status != 200 or answer.get("FailedInstancesCount"):
            raise EgressFailed(answer.get("Details") or f"C-MOVE to {target} failed")

    def _modality_for(self, aet: str) -> str:
        modalities = json.loads(self.pacs.core_get("/modalities?expand"))
        for name, configuration in modalities.items():
            if str(configuration.get("AET", "")).upper() == aet.upper():
                return name
        raise NotFound(f"C-MOVE destination {aet!r} is not one of Orthanc's DicomModalities")

    def _resolve_move(self, request: dict) -> list[str]:
        level = str(request.get("Level", "")).upper()
        key, orthanc_type = {"PATIENT": ("PatientID", "Patient"), "STUDY": ("StudyInstanceUID", "Study"),
                             "SERIES": ("SeriesInstanceUID", "Series"),
                             "INSTANCE": ("SOPInstanceUID", "Instance")}.get(level, ("", ""))
        if not key:
            raise BadRequest(f"C-MOVE: unknown level {level!r}")
        values = [value.strip() for value in str(request.get(key, "")).split("\\") if value.strip()]
        if level == "STUDY" and not values and request.get("AccessionNumber"):
            key, values = "AccessionNumber", [str(request["AccessionNumber"]).strip()]
        found: list[str] = []
        for value in values:
            if key in ("PatientID", "AccessionNumber"):
                query = json.dumps({"Level": orthanc_type, "Query": {key: value}}).encode()
                found += json.loads(self.pacs.core_post("/tools/find", query))
            else:
                matches = json.loads(self.pacs.core_post("/tools/lookup", value.encode()))
                found += [match["ID"] for match in matches if match.get("Type") == orthanc_type]
        return list(dict.fromkeys(found))

    # -- helpers ------------------------------------------------------------------------------

    def _instances(self, resources: list[str]) -> list[dicom_sender.Item]:
        """Every instance under these resources (any level), in order, each once."""
        instance_ids: list[str] = []
        for resource in resources:
            instance_ids += self._expand(resource)
        return [self._item(instance_id) for instance_id in dict.fromkeys(instance_ids)]

    def _expand(self, resource: str) -> list[str]:
        if not ORTHANC_ID.match(resource):
            raise BadRequest(f"This string is not a valid Orthanc identifier: {resource}")
        for level in LEVELS:
            try:
                self.pacs.core_get(f"/{level}/{resource}")  # 404 at the wrong level (.../instances would be [])
            except NotFound:
                continue
            if level == "instances":
                return [resource]
            return [child["ID"] for child in json.loads(self.pacs.core_get(f"/{level}/{resource}/instances"))]
        raise NotFound(f"unknown resource {resource}")

    def _item(self, instance_id: str) -> dicom_sender.Item:
        header = json.loads(self.pacs.core_get(f"/instances/{instance_id}/header"))

        def value(tag: str) -> str:
            return str(header.get(tag, {}).get("Value", "")).strip("\0 ")

        return dicom_sender.Item(instance_id, value("0002,0002"), value("0002,0010"),
                                 lambda: self.pacs.instance_file(instance_id))


def _move_keys(request: dict) -> str:
    return ", ".join(f"{key}={request[key]}" for key in ("PatientID", "AccessionNumber", "StudyInstanceUID",
                                                          "SeriesInstanceUID", "SOPInstanceUID") if request.get(key))


class StoreJobs:
    """Asynchronous stores that include HTJ2K instances, shown as Orthanc jobs under GET /jobs/{id}.

    The Python plugin 4.0 cannot create Orthanc jobs; Orthanc Explorer sends with
    ``"Synchronous": false`` and then opens the job page, so these jobs answer in Orthanc's job
    format (type DicomModalityStore) while every other job ID is Orthanc's own answer. They live
    in memory (the last KEEP of them).
    """

    KEEP = 200

    def __init__(self):
        self.jobs: dict[str, dict] = {}
        self.lock = threading.Lock()

    def submit(self, work) -> dict:
        job_id = str(uuid.uuid4())
        now = _timestamp()
        job = {"ID": job_id, "Type": "DicomModalityStore", "State": "Running", "Progress": 0, "Priority": 0,
               "CreationTime": now, "Timestamp": now, "ErrorCode": 0, "ErrorDescription": "Success",
               "ErrorDetails": "", "Content": {}, "EffectiveRuntime": 0.0}
        with self.lock:
            self.jobs[job_id] = job
            for old in list(self.jobs)[:-self.KEEP]:
                del self.jobs[old]
        threading.Thread(target=self._run, args=(job, work), name=f"neuronova-store-{job_id[:8]}",
                         daemon=True).start()
        return {"ID": job_id, "Path": f"/jobs/{job_id}"}

    def _run(self, job: dict, work) -> None:
        started = time.monotonic()
        try:
            status, body = work()
            content = json.loads(body)
            failed = status != 200
        except Exception as error:  # the job reports it, as Orthanc's jobs do
            log.exception("asynchronous store failed")
            content, failed = {"Details": f"{type(error).__name__}: {error}"}, True
        update = {"State": "Failure" if failed else "Success", "Progress": 100, "Content": content,
                  "CompletionTime": _timestamp(), "Timestamp": _timestamp(),
                  "EffectiveRuntime": round(time.monotonic() - started, 3)}
        if failed:
            update.update(ErrorCode=9, ErrorDescription="Error in the network protocol",
                          ErrorDetails=content.get("Details", ""))
        with self.lock:
            job.update(update)

    def get(self, job_id: str) -> dict | None:
        with self.lock:
            job = self.jobs.get(job_id)
            return dict(job) if job else None


def _timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%dT%H%M%S.%f")


class EgressRoutes:
    def __init__(self, pacs: Pacs):
        self.pacs = pacs
        self.egress = Egress(pacs)
        self.jobs = StoreJobs()

    def routes(self) -> list[tuple[str, object]]:
        return [
            ("/neuronova/instances/([^/]+)/uncompressed", self.uncompressed),
            # Core URIs: requests with HTJ2K instances are sent here, all others by Orthanc unchanged.
            ("/modalities/([^/]+)/store", self.store),
            ("/jobs/([0-9a-f-]+)", self.job),
        ]

    def uncompressed(self, request: Request) -> Response:
        """GET: the stored instance as uncompressed Explicit VR Little Endian (same SOP Instance UID)."""
        allow(request, "GET")
        instance_id = request.groups[0]
        self.pacs.transfer_syntax(instance_id)  # 404 for an unknown instance
        data = to_explicit_little_endian(self.pacs.instance_file(instance_id))
        return Response(200, data, "application/dicom",
                        {"Content-Disposition": f'attachment; filename="{instance_id}.dcm"'})

    def store(self, request: Request) -> Response:
        allow(request, "POST")
        store_request = StoreRequest.parse(request.body)
        modality = request.groups[0]
        if store_request.asynchronous and self.egress.needs_plugin(modality, store_request):
            return json_response(200, self.jobs.submit(lambda: self.egress.store(modality, store_request)))
        status, body = self.egress.store(modality, store_request)
        return Response(status, body) if status == 200 else json_response(status, json.loads(body))

    def job(self, request: Request) -> Response:
        """GET /jobs/{id}: the plugin's asynchronous stores; Orthanc's answer for every other job."""
        allow(request, "GET")
        job = self.jobs.get(request.groups[0])
        if job is None:
            return Response(200, self.pacs.core_get(request.uri))
        return json_response(200, job)
