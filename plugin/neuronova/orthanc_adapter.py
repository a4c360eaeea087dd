"""The one module that speaks to the Orthanc SDK: it receives the `orthanc` module and registers
routes and callbacks that delegate to the plain-Python package."""

from __future__ import annotations

import json
import logging
import threading
from urllib.parse import unquote_plus

import requests

from .api import Api
from .http import Request, Response, answer
from .config import Settings, load_settings
from .directory import EmbeddedRegistry, PatientDirectory
from .errors import BadRequest, CoreCannotAnswer, NotFound, StoreRejected
from .history import IngestHistory
from .ingest import DISCARD, MODIFY, Ingest
from .metrics import Metrics
from .per_thread import PerThread
from .reconcile import Reconciler
from .storage import container
from .storage.area import StorageArea, StorageError
from .storage.background import BackgroundCompressor
from .storage.ledger import Ledger
from .ui import explorer_extension_js
from .upload import UploadService

log = logging.getLogger("neuronova")
HTJ2K_CONTAINERS = frozenset({"1.2.840.10008.1.2.4.201"})


class _OrthancLogHandler(logging.Handler):
    """Sends the package's log records to Orthanc's log, at Orthanc's matching level."""

    def __init__(self, sdk):
        super().__init__()
        self.sdk = sdk

    def emit(self, record: logging.LogRecord) -> None:
        message = "NeuroNova: " + self.format(record)
        if record.levelno >= logging.ERROR:
            self.sdk.LogError(message)
        elif record.levelno >= logging.WARNING:
            self.sdk.LogWarning(message)
        else:
            self.sdk.LogInfo(message)


def start(sdk) -> None:
    """Parse the configuration, build the services, register everything. Raises on bad configuration."""
    handler = _OrthancLogHandler(sdk)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    orthanc_config = json.loads(sdk.GetConfiguration())
    settings = load_settings(orthanc_config)  # raises ConfigError naming the key
    directory = _build_directory(settings)
    ledger = Ledger(settings.ledger_database)
    history = IngestHistory(settings.history_database)
    area = StorageArea(settings.storage, ledger)
    background = BackgroundCompressor(area, ledger, settings.background, history.set_stored)
    if settings.storage.when == "background":
        area.enqueue = background.enqueue
    pacs = OrthancPacs(sdk, orthanc_config, area)
    metrics = Metrics(lambda name, value: sdk.SetMetricsValue(name, value, sdk.MetricsType.DEFAULT))
    metrics.storage_totals = ledger.totals
    reconciler = Reconciler(directory, settings.reconciliation, pacs.study_owner)
    ingest = Ingest(reconciler, history, metrics)
    uploads = UploadService(directory, ingest, pacs.store, settings.upload)
    api = Api(settings, directory, uploads, pacs, ingest, history, ledger, background)
    for uri, route in api.routes():
        sdk.RegisterRestCallback(uri, _rest_callback(sdk, route))
    sdk.ExtendOrthancExplorer(explorer_extension_js())  # the "Upload DICOM" button
    sdk.SetRootUri("../neuronova/app/index.html")  # Explorer's Plugins page links to the dashboard
    _register_storage_area(sdk, area)
    requests_seen = _register_http_request_filter(sdk)
    sdk.RegisterReceivedInstanceCallback(_received_instance_callback(sdk, ingest, requests_seen))
    sdk.RegisterIncomingCStoreInstanceFilter(
        lambda instance: ingest.cstore_filter(instance.GetInstanceData(), instance.GetInstanceRemoteAet()))
    sdk.RegisterOnStoredInstanceCallback(_on_stored(ingest, area))
    sdk.RegisterOnChangeCallback(_on_change(sdk, background, history, ledger, reconciler))
    background.start()
    log.info("started: directory %s, storage %s (compression %s, %s), reconciliation %s",
             settings.directory.backend, settings.storage.root, settings.storage.pack.target, settings.storage.when,
             "on" if settings.reconciliation.enabled else "off")


def _register_storage_area(sdk, area: StorageArea) -> None:
    """Orthanc's storage area: exceptions in create refuse the instance cleanly (HTTP 500, C-STORE 0xA700)."""
    dicom = sdk.ContentType.DICOM

    def create(uuid, content_type, data):
        area.create(uuid, content_type == dicom, data)

    def read(uuid, content_type):
        return area.read(uuid)

    def remove(uuid, content_type):
        area.remove(uuid)

    sdk.RegisterStorageArea(create, read, remove)


def _register_http_request_filter(sdk) -> PerThread:
    """Marks each HTTP thread with the request it serves (it lets every request through): the
    received-instance callback tells an ingest (POST /instances, STOW-RS, uploads) from what Orthanc
    makes at a user's request, which its job threads store, unmarked."""
    seen: PerThread[tuple] = PerThread()

    def request_filter(uri, **request):
        seen.set((request.get("method"), uri))
        return True

    sdk.RegisterIncomingHttpRequestFilter(request_filter)
    return seen


def _on_stored(ingest: Ingest, area: StorageArea):
    """The history row first, then (background mode) the file to the workers: a worker that
    compressed the file before the row was written would update no row, and the history would keep
    the received size (the SQLite writer runs statements in the order they are submitted)."""
    def on_stored(instance, instance_id):
        written = area.take_written()
        try:
            ingest.stored(written, instance.GetInstanceRemoteAet())
        finally:
            if written is not None and written.packed.outcome == "pending" and area.enqueue is not None:
                area.enqueue(written.uuid)
    return on_stored


def _on_change(sdk, background: BackgroundCompressor, history: IngestHistory, ledger: Ledger,
               reconciler: Reconciler):
    def on_change(change_type, level, resource):
        if change_type == sdk.ChangeType.DELETED and level in (sdk.ResourceType.STUDY, sdk.ResourceType.PATIENT):
            reconciler.study_owners.forget_all()  # Orthanc signals each deleted study (measured on 1.10)
        elif change_type == sdk.ChangeType.ORTHANC_STOPPED:
            background.stop()
            history.close()
            ledger.close()
    return on_change


def _build_directory(settings: Settings) -> PatientDirectory:
    if settings.directory.backend == "fhir":
        from .directory.fhir import FhirDirectory
        return FhirDirectory(settings.directory.fhir)
    return EmbeddedRegistry(settings.directory.database, settings.directory.seed_file)


class OrthancPacs:
    """The Pacs protocol over Orthanc's own REST API, called in-process."""

    def __init__(self, sdk, orthanc_config: dict, area: StorageArea):
        self.sdk = sdk
        self.area = area
        scheme = "https" if orthanc_config.get("SslEnabled") else "http"
        self._instances_url = f"{scheme}://127.0.0.1:{orthanc_config.get('HttpPort', 8042)}/instances"
        self._token = sdk.GenerateRestApiAuthorizationToken()
        self._local = threading.local()

    def store(self, dicom: bytes) -> dict:
        """POST /instances through Orthanc's own HTTP server on loopback. Not RestApiPost: orthanc-python
        4.0 keeps the GIL during SDK calls, and a store waits for the plugin lock that a C-STORE or
        STOW-RS thread may hold while it waits for the GIL (a deadlock, measured). A socket wait
        releases the GIL. The token Orthanc generated grants access when authentication is on."""
        try:
            answer = self._session().post(self._instances_url, data=dicom, timeout=600,
                                          headers={"Content-Type": "application/dicom"})
        except requests.RequestException as error:
            raise StoreRejected(f"Orthanc's REST API did not answer on loopback: {error}") from None
        if answer.status_code != 200:
            detail = answer.text[:300]
            try:
                detail = answer.json().get("Details") or answer.json().get("Message") or detail
            except ValueError:
                pass
            raise StoreRejected(f"Orthanc refused to store the file (HTTP {answer.status_code}): {detail}")
        return answer.json()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = self._token
            session.verify = False  # loopback to Orthanc itself, whatever its certificate
        return session

    def transfer_syntax(self, instance_id: str) -> str:
        try:
            header = json.loads(self.sdk.RestApiGet(f"/instances/{instance_id}/header"))
        except self.sdk.OrthancException:
            raise NotFound(f"unknown instance {instance_id!r}") from None
        return header.get("0002,0010", {}).get("Value", "").strip("\0 ")

    def instance_file(self, instance_id: str) -> bytes:
        return self.sdk.RestApiGet(f"/instances/{instance_id}/file")

    def kept_codestreams(self, instance_id: str):
        """(syntax, codestream per frame) when the storage area keeps this instance as HTJ2K, else None."""
        try:
            info = json.loads(self.sdk.RestApiGet(f"/instances/{instance_id}/attachments/dicom/info"))
            with open(self.area.path(info["Uuid"]), "rb") as stored_file:
                stored = stored_file.read()
        except (self.sdk.OrthancException, OSError, KeyError, ValueError, StorageError):
            return None
        if not container.is_container(stored):
            return None
        syntax, codestreams = container.frame_codestreams(stored)
        return (syntax, codestreams) if syntax in HTJ2K_CONTAINERS else None

    def study_owner(self, study_instance_uid: str) -> dict[str, str] | None:
        matches = json.loads(self.sdk.RestApiPost("/tools/lookup", study_instance_uid))
        study = next((match for match in matches if match.get("Type") == "Study"), None)
        if study is None:
            return None
        tags = json.loads(self.sdk.RestApiGet(f"/studies/{study['ID']}")).get("PatientMainDicomTags", {})
        return {key: tags.get(key, "") for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")}

    def core_get(self, uri: str) -> bytes:
        try:
            return self.sdk.RestApiGet(uri)  # the built-in API only; "AfterPlugins" would call us again
        except self.sdk.OrthancException as error:
            raise _core_error(error, f"GET {uri}") from None

    def core_post(self, uri: str, body: bytes) -> bytes:
        try:
            return self.sdk.RestApiPost(uri, body)  # the built-in API only, as core_get
        except self.sdk.OrthancException as error:
            raise _core_error(error, f"POST {uri}") from None


def _core_error(error: Exception, request: str) -> Exception:
    """Orthanc's answer to a built-in call that failed, as the status the core would have sent."""
    code = error.args[0] if error.args else None
    detail = error.args[-1] if error.args else error
    if code in (7, 17):  # InexistentItem, UnknownResource
        return NotFound(f"Orthanc answers 404 to {request}")
    if code == 8:  # BadRequest
        return BadRequest(f"Orthanc answers 400 to {request}: {detail}")
    return CoreCannotAnswer(f"Orthanc cannot answer {request}: {detail}")


def _rest_callback(sdk, route):
    def callback(output, uri, **request):
        response = answer(route, Request(
            method=request["method"],
            uri=uri,
            groups=tuple(request.get("groups", ())),
            # Orthanc hands GET arguments over still percent-encoded.
            query={unquote_plus(key): unquote_plus(value) for key, value in request.get("get", {}).items()},
            headers={key.lower(): value for key, value in request.get("headers", {}).items()},
            body=request.get("body", b""),
        ))
        _send(sdk, output, response)
    return callback


def _send(sdk, output, response: Response) -> None:
    if response.status == 405:  # Orthanc insists on its own call for 405
        output.SendMethodNotAllowed(response.headers.get("Allow", ""))
        return
    for name, value in response.headers.items():
        output.SetHttpHeader(name, value)
    if response.status == 200:
        output.AnswerBuffer(response.body, response.content_type)
        return
    output.SetHttpHeader("Content-Type", response.content_type)
    try:  # orthanc-python 4.2 and later
        output.SendHttpStatus(response.status, response.body)
    except TypeError:  # orthanc-python 4.0 and 4.1: (status, str, length)
        text = response.body.decode("utf-8")
        output.SendHttpStatus(response.status, text, len(response.body))


def _received_instance_callback(sdk, ingest: Ingest, requests_seen: PerThread):
    actions = sdk.ReceivedInstanceAction
    origins = sdk.InstanceOrigin
    paths = {origins.DICOM_PROTOCOL: "dicom", origins.REST_API: "rest", origins.PLUGIN: "plugin",
             origins.LUA: "lua", origins.WEB_DAV: "webdav"}

    def reconciles(origin) -> bool:
        if origin == origins.DICOM_PROTOCOL:
            return True
        request = requests_seen.get()
        if request is None:  # a job thread: modify, anonymize, merge, split (or another plugin's thread)
            return False
        if origin == origins.REST_API:  # POST /instances; not /tools/create-dicom and the like
            return request[1].rstrip("/") == "/instances"
        return True  # STOW-RS and other plugins' uploads, WebDAV, on an HTTP thread

    def callback(received: bytes, origin):
        action, data = ingest.received(received, paths.get(origin, "unknown"), reconciles(origin))
        if action == MODIFY:
            return actions.MODIFY, data
        return (actions.DISCARD if action == DISCARD else actions.KEEP_AS_IS), None
    return callback
