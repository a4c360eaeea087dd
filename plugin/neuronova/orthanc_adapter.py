"""The one module that speaks to the Orthanc SDK: it receives the `orthanc` module and registers
routes and callbacks that delegate to the plain-Python package."""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import signal
import threading
import time
from urllib.parse import unquote_plus

import requests

from .api import Api
from .http import Request, RequestGate, Response, answer
from .config import Settings, load_settings
from .directory import PatientDirectory
from .errors import BadRequest, CoreCannotAnswer, NeuroNovaError, NotFound, StorageFull, StoreRejected
from .history import IngestHistory
from .history_recovery import recover_missing_rows
from .ingest import DISCARD, MODIFY, Ingest
from .logs import keep_libraries_at_debug
from .metrics import Metrics
from .reconcile import Reconciler, StudyOwners
from .shared_state.cluster import PluginState, open_state
from .storage import container
from .storage.area import StorageArea, StorageError
from .storage.background import BackgroundCompressor
from .storage.ledger import Ledger
from .ui import explorer_extension_js
from .upload import UploadService
from .viewer import explorer_js as viewer_explorer_js

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
    keep_libraries_at_debug()

    orthanc_config = json.loads(sdk.GetConfiguration())
    settings = load_settings(orthanc_config)  # raises ConfigError naming the key
    state = open_state(settings)  # SQLite, or PostgreSQL for several servers (raises if it never answers)
    directory, history, owners = state.registry or _fhir_directory(settings), state.history, state.owners
    ledger = Ledger(settings.ledger_database)
    area = StorageArea(settings.storage, ledger)
    background = BackgroundCompressor(area, ledger, settings.background, history.set_stored)
    if settings.storage.when == "background":
        area.enqueue = background.enqueue
    pacs = OrthancPacs(sdk, orthanc_config, area)
    metrics = Metrics(lambda name, value: sdk.SetMetricsValue(name, value, sdk.MetricsType.DEFAULT))
    metrics.storage_totals = ledger.totals
    reconciler = Reconciler(directory, settings.reconciliation, owners)
    ingest = Ingest(reconciler, history, metrics)
    uploads = UploadService(directory, ingest, pacs.store, settings.upload, pacs, settings.nifti)
    api = Api(settings, directory, uploads, pacs, ingest, history, ledger, background)
    gate = RequestGate(settings.requests.concurrent, settings.requests.retry_after)
    for uri, route in api.routes():
        sdk.RegisterRestCallback(uri, _rest_callback(sdk, gate(route)))
    for uri, route in api.routes_without_orthanc():
        sdk.RegisterRestCallback(uri, _rest_callback(sdk, route))
    sdk.RegisterRestCallback("/tools/reset", _reset_callback(sdk, metrics, background, state, ledger))
    # One call (one script per plugin): the "Upload DICOM" button, then "Open in viewer" on studies and series
    sdk.ExtendOrthancExplorer(explorer_extension_js() + "\n" + viewer_explorer_js())
    sdk.SetRootUri("../neuronova/app/index.html")  # Explorer's Plugins page links to the dashboard
    _register_storage_area(sdk, area)
    sdk.RegisterReceivedInstanceCallback(_received_instance_callback(sdk, ingest))
    sdk.RegisterIncomingCStoreInstanceFilter(
        lambda instance: ingest.cstore_filter(instance.GetInstanceData, instance.GetInstanceRemoteAet()))
    sdk.RegisterOnStoredInstanceCallback(_on_stored(ingest, area))
    load_owners = threading.Thread(target=_load_study_owners, args=(pacs, owners, history, ledger, state.shared),
                                   name="neuronova-owners", daemon=True)
    sdk.RegisterOnChangeCallback(_on_change(sdk, background, state, ledger, metrics, reconciler, load_owners.start,
                                            api.reverifier.stop))
    background.start()
    api.reverifier.start()
    log.info("started: directory %s, storage %s (compression %s, %s), reconciliation %s, state in %s",
             settings.directory.backend, settings.storage.root, settings.storage.pack.target, settings.storage.when,
             "on" if settings.reconciliation.enabled else "off", settings.shared.backend)


def _load_study_owners(pacs: OrthancPacs, owners: StudyOwners, history: IngestHistory, ledger: Ledger,
                       shared: bool) -> None:
    """Read the stored studies' patients once Orthanc has started (a plugin may not call the database
    while it initializes): decisions wait for it (instances meanwhile refused with a retry status)."""
    attempt = 0
    while True:  # until it works: meanwhile instances are refused with a status the sender retries
        try:
            studies = pacs.stored_studies()
        except NeuroNovaError as error:
            attempt += 1
            log.warning("the stored studies cannot be read yet (%s): trying again (attempt %d)", error, attempt)
            time.sleep(min(0.1 * attempt, 5.0))
            continue
        owners.load(studies)
        log.info("patients of %d stored studies loaded", len(studies))
        recover_missing_rows(pacs.core_get, history, ledger.sizes,
                             others_seconds=SHARED_ROWS_SECONDS if shared else 0.0)
        return


SHARED_ROWS_SECONDS = 2.0  # forty rounds of every server's history writer


def _sdk_releases_the_gil(sdk, orthanc_config: dict) -> bool:
    """orthanc-python 4.3 and later with "Python": {"AllowThreads": true} (Debian 13's 5.0; not 12's 4.0)."""
    python = orthanc_config.get("Python")
    if not (isinstance(python, dict) and python.get("AllowThreads") is True):
        return False
    return _orthanc_python_version(sdk) >= (4, 3)


@functools.cache
def _orthanc_python_version(sdk) -> tuple[int, ...]:
    """Asked of Orthanc once, at the first call (not while the plugin initializes); (0,) when unknown."""
    try:
        version = json.loads(sdk.RestApiGet("/plugins/python")).get("Version", "0")
        return tuple(int(part) for part in version.split(".")[:2])
    except (ValueError, sdk.OrthancException):
        return (0,)


# orthanc-python 4.0 (Debian 12) never frees the body of a REST callback's request: its bytes object
# keeps one reference too many (measured: 300 MB of resident memory per 300 MB request, on any route,
# even one that does nothing). Later versions hold it in a wrapper that releases it.
_LEAKS_REQUEST_BODIES = {(4, 0)}


def _register_storage_area(sdk, area: StorageArea) -> None:
    """Orthanc's storage area: exceptions in create refuse the instance cleanly (HTTP 500, C-STORE 0xA700)."""
    dicom = sdk.ContentType.DICOM

    def create(uuid, content_type, data):
        try:
            area.create(uuid, content_type == dicom, data)
        finally:
            if len(data) > _TRIM_AFTER_BYTES:
                _LIBC.malloc_trim(0)  # the pages a large instance's compression spent go back to the system

    def read(uuid, content_type):
        return area.read(uuid)

    def remove(uuid, content_type):
        area.remove(uuid)

    sdk.RegisterStorageArea(create, read, remove)


def _on_stored(ingest: Ingest, area: StorageArea):
    """The history row first, then (background mode) the file to the workers: a worker that
    compressed the file before the row was written would update no row, and the history would keep
    the received size (the SQLite writer runs statements in the order they are submitted)."""
    def on_stored(instance, instance_id):
        written = area.take_written()
        try:
            ingest.stored(written, instance.GetInstanceRemoteAet)
        finally:
            if written is not None and written.packed.outcome == "pending" and area.enqueue is not None:
                area.enqueue(written.uuid)
    return on_stored


def _on_change(sdk, background: BackgroundCompressor, state: PluginState, ledger: Ledger, metrics: Metrics,
               reconciler: Reconciler, started, stop_reverifying):
    """Orthanc calls this for every change (NEW_INSTANCE for each instance): it does nothing else."""
    changes = sdk.ChangeType
    started_change, deleted, stopped = changes.ORTHANC_STARTED, changes.DELETED, changes.ORTHANC_STOPPED
    study = sdk.ResourceType.STUDY

    def on_change(change_type, level, resource):
        if change_type == deleted:
            if level == study:
                reconciler.study_owners.release(resource)  # Orthanc signals each deleted study (measured on 1.10)
        elif change_type == started_change:
            started()  # the plugin may call the database from now on
        elif change_type == stopped:
            stop_reverifying()
            metrics.stop()
            background.stop()
            state.close()
            ledger.close()
    return on_change


def _reset_callback(sdk, metrics: Metrics, background: BackgroundCompressor, state: PluginState, ledger: Ledger):
    """POST /tools/reset: Orthanc's restart, which reloads its configuration. Orthanc does it inside
    the process, re-initializing the Python plugin, and numpy cannot be loaded twice in one process:
    the plugin failed and Orthanc stopped for good (measured). So the restart is a new Orthanc in
    the same process (exec, same PID and arguments): the configuration is read again, as asked.
    The answer is Orthanc's own ({}); the plugin's pending rows are written first."""
    def callback(output, uri, **request):
        if request.get("method") != "POST":
            output.SendMethodNotAllowed("POST")
            return
        headers = {key.lower(): value for key, value in request.get("headers", {}).items()}
        refusal = answer(lambda checked: Response(200, b"{}"), Request("POST", uri, headers=headers))
        if refusal.status != 200:  # a page of another site may not restart the PACS
            _send(sdk, output, refusal)
            return
        output.AnswerBuffer(b"{}", "application/json")
        threading.Thread(target=_exec_again, args=(metrics, background, state, ledger), daemon=True).start()
    return callback


def _exec_again(metrics: Metrics, background: BackgroundCompressor, state: PluginState, ledger: Ledger) -> None:
    time.sleep(0.3)  # the answer leaves first
    log.warning("restarting Orthanc (POST /tools/reset): a new Orthanc process image, same PID")
    metrics.stop()
    background.stop()
    state.close()
    ledger.close()
    with open("/proc/self/cmdline", "rb") as cmdline:
        arguments = [part.decode() for part in cmdline.read().split(b"\0") if part]
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # the listening sockets and the index: the new image opens its own
    signal.pthread_sigmask(signal.SIG_SETMASK, [])  # this thread's mask is inherited: SIGTERM must stop the new one
    os.execv("/proc/self/exe", arguments)


def _fhir_directory(settings: Settings) -> PatientDirectory:
    from .directory.fhir import FhirDirectory
    return FhirDirectory(settings.directory.fhir)


class OrthancPacs:
    """The Pacs protocol over Orthanc's own REST API.

    In-process SDK calls only where orthanc-python releases the GIL during them ("Python":
    {"AllowThreads": true}, orthanc-python 4.3 and later). orthanc-python 4.0 keeps the GIL during
    every SDK call, and Orthanc calls the storage area (Python) while holding its own locks (it
    removes files inside the index transaction), so a Python thread waiting in the SDK for such a
    lock while holding the GIL deadlocks Orthanc. Otherwise calls go to Orthanc's HTTP server on
    loopback, where the wait releases the GIL, with a token Orthanc generated (valid when
    authentication is on). Stores always go by loopback: a store waits for the plugin lock that a
    C-STORE thread may hold while it waits for the GIL (a deadlock, measured on 4.0)."""

    def __init__(self, sdk, orthanc_config: dict, area: StorageArea):
        self.sdk = sdk
        self.area = area
        self._orthanc_config = orthanc_config
        self._in_process: bool | None = None
        self._plus_as_space: bool | None = None
        scheme = "https" if orthanc_config.get("SslEnabled") else "http"
        self._base_url = f"{scheme}://127.0.0.1:{orthanc_config.get('HttpPort', 8042)}"
        self._token = sdk.GenerateRestApiAuthorizationToken()
        self._local = threading.local()

    def store(self, dicom: bytes) -> dict:
        try:
            answer = self._session().post(self._base_url + "/instances", data=dicom, timeout=600,
                                          headers={"Content-Type": "application/dicom"})
        except requests.RequestException as error:
            raise StoreRejected(f"Orthanc's REST API did not answer on loopback: {error}") from None
        if answer.status_code != 200:
            if self.area.disk_full():
                raise StorageFull("the storage area's disk is full: the file was not stored (nothing is wrong "
                                  "with it); send it again once space is freed")
            raise StoreRejected(f"Orthanc refused to store the file (HTTP {answer.status_code}): {_detail(answer)}")
        return answer.json()

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.headers["Authorization"] = self._token
            session.verify = False  # loopback to Orthanc itself, whatever its certificate
        return session

    def transfer_syntax(self, instance_id: str) -> str:
        header = json.loads(self.core_get(f"/instances/{instance_id}/header"))
        return header.get("0002,0010", {}).get("Value", "").strip("\0 ")

    def kept_codestreams(self, instance_id: str):
        """(syntax, codestream per frame) when the storage area keeps this instance as HTJ2K, else None."""
        try:
            info = json.loads(self.core_get(f"/instances/{instance_id}/attachments/dicom/info"))
            with open(self.area.path(info["Uuid"]), "rb") as stored_file:
                stored = stored_file.read()
        except (NotFound, CoreCannotAnswer, OSError, KeyError, ValueError, StorageError):
            return None
        if not container.is_container(stored) or container.read_recipe(stored).layout.planar:
            # PlanarConfiguration 1: the metadata says planar, a decoded codestream is interleaved, and
            # a viewer that follows the metadata (Cornerstone) would read the samples as planes
            return None
        syntax, codestreams = container.frame_codestreams(stored)
        return (syntax, codestreams) if syntax in HTJ2K_CONTAINERS else None

    def stored_studies(self) -> dict[str, dict[str, str]]:
        """{StudyInstanceUID: patient tags} of every stored study, a page at a time, through core_get
        (orthanc-python 4.0 never frees the answers of in-process calls: NEWS of 4.1). Raises
        NeuroNovaError while Orthanc cannot answer yet."""
        studies, since, page = {}, 0, 1000
        while True:
            batch = json.loads(self.core_get(f"/studies?expand&since={since}&limit={page}"))
            for study in batch:
                tags = study.get("PatientMainDicomTags", {})
                studies.setdefault(study.get("MainDicomTags", {}).get("StudyInstanceUID", ""), {
                    key: tags.get(key, "") for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex")})
            if len(batch) < page:
                return studies
            since += page

    @property
    def in_process(self) -> bool:
        """Asked of Orthanc once, at the first call (not while the plugin initializes)."""
        if self._in_process is None:
            self._in_process = _sdk_releases_the_gil(self.sdk, self._orthanc_config)
        return self._in_process

    def plus_arrives_as_space(self) -> bool:
        """Orthanc 1.12 hands "+7" of a URI over as " 7" (MISSION.md); 1.10 as it is. Asked once."""
        if self._plus_as_space is None:
            version = json.loads(self.core_get("/system")).get("Version", "")
            try:
                self._plus_as_space = tuple(int(part) for part in version.split(".")[:2]) >= (1, 12)
            except ValueError:  # "mainline": a recent Orthanc
                self._plus_as_space = True
        return self._plus_as_space

    def core_get(self, uri: str) -> bytes:
        """Orthanc's built-in answer (never "AfterPlugins", which would call the plugin's routes again)."""
        if self.in_process:
            try:
                return self.sdk.RestApiGet(uri)
            except self.sdk.OrthancException as error:
                raise _core_error(error, f"GET {uri}") from None
        return self._loopback("GET", uri)

    def core_post(self, uri: str, body: bytes) -> bytes:
        if self.in_process:
            try:
                return self.sdk.RestApiPost(uri, body)
            except self.sdk.OrthancException as error:
                raise _core_error(error, f"POST {uri}") from None
        return self._loopback("POST", uri, body)

    def core_delete(self, uri: str) -> None:
        if self.in_process:
            try:
                self.sdk.RestApiDelete(uri)
                return
            except self.sdk.OrthancException as error:
                raise _core_error(error, f"DELETE {uri}") from None
        self._loopback("DELETE", uri)

    def _loopback(self, method: str, uri: str, body: bytes | None = None) -> bytes:
        try:
            answer = self._session().request(method, self._base_url + uri, data=body, timeout=120,
                                             headers={"Accept-Encoding": "identity"})
        except requests.RequestException as error:
            raise CoreCannotAnswer(f"Orthanc's REST API did not answer {method} {uri} on loopback: {error}") from None
        if answer.status_code == 404:
            raise NotFound(f"Orthanc answers 404 to {method} {uri}")
        if answer.status_code == 400:
            raise BadRequest(f"Orthanc answers 400 to {method} {uri}: {_detail(answer)}")
        if answer.status_code != 200:
            raise CoreCannotAnswer(f"Orthanc cannot answer {method} {uri}: HTTP {answer.status_code} {_detail(answer)}")
        return answer.content


def _detail(answer: requests.Response) -> str:
    """Orthanc's own explanation in an error answer."""
    try:
        return answer.json().get("Details") or answer.json().get("Message") or answer.text[:300]
    except ValueError:
        return answer.text[:300]


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
        body = request.get("body", b"")
        try:
            response = answer(route, Request(
                method=request["method"],
                uri=uri,
                groups=tuple(request.get("groups", ())),
                # Orthanc hands GET arguments over still percent-encoded.
                query={unquote_plus(key): unquote_plus(value) for key, value in request.get("get", {}).items()},
                headers={key.lower(): value for key, value in request.get("headers", {}).items()},
                body=body,
            ))
            _send(sdk, output, response)
        finally:
            if body and _orthanc_python_version(sdk) in _LEAKS_REQUEST_BODIES:
                ctypes.pythonapi.Py_DecRef(ctypes.py_object(body))  # the reference orthanc-python forgets
            if len(body) > _TRIM_AFTER_BYTES:
                _LIBC.malloc_trim(0)  # what the request spent goes back to the system, not kept for the next one
    return callback


_TRIM_AFTER_BYTES = 64 * 1024 * 1024


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


def _received_instance_callback(sdk, ingest: Ingest):
    actions = sdk.ReceivedInstanceAction
    origins = sdk.InstanceOrigin
    paths = {origins.DICOM_PROTOCOL: "dicom", origins.REST_API: "rest", origins.PLUGIN: "plugin",
             origins.LUA: "lua", origins.WEB_DAV: "webdav"}
    made_by_orthanc = (origins.REST_API, origins.PLUGIN)

    def callback(received: bytes, origin):
        reconcile = not (origin in made_by_orthanc and _on_a_job_thread())
        action, data = ingest.received(received, paths.get(origin, "unknown"), reconcile)
        if action == MODIFY:
            return actions.MODIFY, data
        return (actions.DISCARD if action == DISCARD else actions.KEEP_AS_IS), None
    return callback


def _on_a_job_thread() -> bool:
    """Orthanc stores what its jobs make (modify, anonymize, merge, split: what a user asked for) from
    its job threads, whose operating-system name is the process's, "Orthanc" (measured on 1.10; 1.12
    names its threads, "JOBS-WORKER-0", "JOB-INS-WORK-0", in its logs only: its Logging source); REST
    and STOW-RS uploads come on HTTP threads, which civetweb names "civetweb-worker". An incoming HTTP
    request filter cannot tell: Orthanc runs it under the lock of the received-instance callback,
    which would serialize every HTTP request with ingest (measured)."""
    name = _current_thread_name()
    return name == "Orthanc" or name.upper().startswith("JOB")


_PR_GET_NAME = 16
_LIBC = ctypes.PyDLL(None)  # PyDLL: the call keeps the GIL (a CDLL call would hand it to another thread)


def _current_thread_name() -> str:
    """The calling thread's operating-system name (prctl PR_GET_NAME: one system call, no file)."""
    name = ctypes.create_string_buffer(16)
    if _LIBC.prctl(_PR_GET_NAME, name, 0, 0, 0) != 0:
        return ""
    return name.value.decode("ascii", "replace")
