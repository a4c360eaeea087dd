"""Send one case through one path (REST, the upload route, STOW-RS, C-STORE) and classify the answer:
accepted (then read back: byte-equal, pixels equal), refused with a clear error, 500, other, crash, hang."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pydicom
import requests
from pynetdicom import AE, _config as pynetdicom_config

from . import dicom_bytes as db
from .mutations import Case
from .servers import Managed

pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True  # send the file's own bytes, never re-encoded by pynetdicom
logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)

# What an answer must not show: a Python traceback, source files, server paths; and, less serious, the names
# of Python exceptions (the plugin's own words for what is wrong with a file are expected instead).
INTERNALS = re.compile(r'Traceback|File "/|\.py", line|/usr/lib/python|site-packages|/work/|/tmp/')
EXCEPTION_NAMES = re.compile(r'\b[A-Z]\w*(Error|Exception): |\bzlib\.error\b|sys\.set_int_max_str_digits')
OUTCOMES = ("accepted", "refused_clear", "refused_unclear", "http_500", "other", "aborted", "crash", "hang",
            "not_sent")
DEFECTS = ("refused_unclear", "http_500", "other", "aborted", "crash", "hang")
PIXEL_CAP_BYTES = 64_000_000  # the campaign never decodes more than this (bombs are not inflated here)


@dataclass
class Result:
    case: str
    kind: str
    server: str
    path: str
    outcome: str
    status: int | str | None = None
    detail: str = ""
    seconds: float = 0.0
    leaks_internals: bool = False
    exception_names: bool = False
    stored: int = 0
    byte_mismatch: int = 0
    pixel_mismatch: int = 0
    pixels_checked: int = 0
    members_lost: int = 0
    valid_refused: bool = False   # a well-formed file (a control) not accepted
    not_as_received: int = 0      # an invalid header (e.g. Pixel Representation 2) transcoded anyway
    plain_nondeterministic: bool = False  # C-STORE: plain Orthanc's own copies of this file differ
    log: list[str] = field(default_factory=list)
    readback_sha: dict = field(default_factory=dict)   # SOP UID -> sha256 of what GET /file gave back

    @property
    def defect(self) -> bool:
        return (self.outcome in DEFECTS or self.leaks_internals or self.byte_mismatch or self.pixel_mismatch
                or self.members_lost > 0 or self.valid_refused or self.not_as_received > 0
                or self.exception_names)


def stow_body(data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + data +
            f"\r\n--{boundary}--\r\n".encode())
    return body, f'multipart/related; type="application/dicom"; boundary={boundary}'


def is_plugin_error(payload) -> bool:
    return isinstance(payload, dict) and payload.get("success") is False and isinstance(payload.get("error"), str) \
        and bool(payload["error"])


def is_orthanc_error(payload) -> bool:
    return isinstance(payload, dict) and ("Message" in payload or "HttpError" in payload or "OrthancError" in payload)


def classify_http(path: str, response: requests.Response) -> tuple[str, str]:
    """(outcome, detail) of an HTTP answer."""
    text = response.text[:600]
    try:
        payload = response.json()
    except ValueError:
        payload = None
    status = response.status_code
    if status == 500:
        return "http_500", text
    if path == "upload":
        if 200 <= status < 300 and isinstance(payload, dict) and \
                (payload.get("success") is True or "results" in payload):
            return "accepted", ""
        if 400 <= status < 500 or status in (503, 507):
            return ("refused_clear" if is_plugin_error(payload) else "refused_unclear"), text
        if isinstance(payload, dict) and "results" in payload:  # a ZIP with failed members
            return "accepted", text
        return "other", text
    if path == "stow":
        if status in (200, 202) and isinstance(payload, dict):
            if payload.get("00081199", {}).get("Value"):
                return "accepted", ""
            if payload.get("00081198", {}).get("Value"):
                reason = payload["00081198"]["Value"][0].get("00081197", {}).get("Value", ["?"])[0]
                return "refused_clear", f"FailedSOPSequence, reason {reason}"
            return "other", f"STOW-RS {status} with no item in Referenced nor Failed SOP Sequence: {text[:300]}"
        if 400 <= status < 500 or status in (503, 507):
            return ("refused_clear" if payload is not None else "refused_unclear"), text
        return "other", text
    # REST /instances: Orthanc's own answers (a plugin's refusal is 200 with Status FilteredOut)
    if status == 200:
        items = payload if isinstance(payload, list) else [payload]
        statuses = {item.get("Status") for item in items if isinstance(item, dict)}
        if statuses & {"Success", "AlreadyStored"}:
            return "accepted", ""
        if "FilteredOut" in statuses:
            return "refused_clear", "FilteredOut"
        if isinstance(payload, list) and not payload:
            return "refused_clear", "empty list (no DICOM member)"
        return "other", text
    if 400 <= status < 500 or status in (503, 507):
        return ("refused_clear" if is_orthanc_error(payload) or is_plugin_error(payload) else "refused_unclear"), text
    return "other", text


class Sender:
    def __init__(self, request_timeout: float, workdir: str):
        self.timeout = request_timeout
        self.workdir = workdir
        self.ae = AE(ae_title="CAMPAIGN")
        self.ae.acse_timeout = 10
        self.ae.dimse_timeout = request_timeout
        self.ae.network_timeout = request_timeout

    def send(self, server: Managed, case: Case, path: str) -> Result:
        result = Result(case.name, case.kind, server.label, path, "other")
        log_offset = server.log_size()
        before = set(server.instances())
        started = time.monotonic()
        try:
            if path == "cstore":
                result.outcome, result.status, result.detail = self.cstore(server, case)
            else:
                response = self.http(server, case, path)
                result.status = response.status_code
                result.outcome, result.detail = classify_http(path, response)
                result.leaks_internals = bool(INTERNALS.search(response.text[:20000]))
                result.exception_names = bool(EXCEPTION_NAMES.search(response.text[:20000]))
        except requests.Timeout:
            result.outcome, result.detail = "hang", f"no answer within {self.timeout:.0f} s"
        except requests.ConnectionError as error:
            result.outcome, result.detail = "other", f"connection error: {error}"[:300]
        result.seconds = round(time.monotonic() - started, 3)
        fault = server.after_request(f"{path} {case.name}", log_offset)
        if fault:
            result.outcome = fault if result.outcome != "hang" or fault == "crash" else "hang"
            if fault == "crash":
                result.detail = server.crashes[-1]["exit"] + (f"; {result.detail}" if result.detail else "")
        result.log = server.last_log
        if result.outcome not in ("crash", "hang"):
            self.check_stored(server, case, result, before)
        server.delete_all()
        return result

    def http(self, server: Managed, case: Case, path: str) -> requests.Response:
        headers = {"Content-Type": case.content_type, "Accept-Encoding": "identity"}
        if path == "rest":
            return requests.post(server.url + "/instances", data=case.data, headers=headers, timeout=self.timeout)
        if path == "upload":
            return requests.post(server.url + "/neuronova/upload", data=case.data, headers=headers,
                                 timeout=self.timeout)
        body, content_type = stow_body(case.data)
        return requests.post(server.url + "/dicom-web/studies", data=body, timeout=self.timeout,
                             headers={"Content-Type": content_type, "Accept": "application/dicom+json"})

    def cstore(self, server: Managed, case: Case) -> tuple[str, int | str | None, str]:
        try:
            meta, _ = db.read_meta(case.data)
            sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
            meta.MediaStorageSOPInstanceUID  # noqa: B018 (pynetdicom needs it)
        except Exception as error:
            return "not_sent", None, f"no usable file meta for C-STORE: {type(error).__name__}"
        handle, file_path = tempfile.mkstemp(suffix=".dcm", dir=self.workdir)
        with os.fdopen(handle, "wb") as out:
            out.write(case.data)
        try:
            self.ae.requested_contexts = []
            self.ae.add_requested_context(sop_class, [syntax])
            assoc = self.ae.associate("127.0.0.1", server.server.dicom_port, ae_title=server.server.aet)
            if not assoc.is_established:
                if server.dead() is not None:
                    return "crash", None, "association failed"
                return "refused_clear", "association", "association rejected or aborted"
            try:
                if not assoc.accepted_contexts:
                    return "refused_clear", "context", f"presentation context {sop_class} / {syntax} rejected"
                try:
                    status = assoc.send_c_store(file_path)
                except (ValueError, AttributeError, OSError, KeyError, EOFError) as error:
                    return "not_sent", None, f"pynetdicom could not send it: {type(error).__name__}: {error}"[:300]
            finally:
                if assoc.is_established:
                    assoc.release()
            if not status or "Status" not in status:
                if assoc.is_aborted:
                    return ("crash" if server.dead() is not None else "aborted"), "abort", \
                        "association aborted by Orthanc, no C-STORE status"
                return "hang", None, "no C-STORE response (DIMSE timeout)"
            code = int(status.Status)
            if code == 0 or 0xB000 <= code <= 0xBFFF:
                return "accepted", f"0x{code:04X}", ""
            if 0xA700 <= code <= 0xA7FF or 0xA900 <= code <= 0xA9FF or 0xC000 <= code <= 0xCFFF:
                comment = str(status.get("ErrorComment", "")) if "ErrorComment" in status else ""
                return "refused_clear", f"0x{code:04X}", comment
            return "other", f"0x{code:04X}", "status outside 0x0000 / 0xA7xx / 0xA9xx / 0xCxxx"
        finally:
            os.unlink(file_path)

    # -- read back ---------------------------------------------------------------------------------------

    def check_stored(self, server: Managed, case: Case, result: Result, before: set[str]) -> None:
        new = [i for i in server.instances() if i not in before]
        result.stored = len(new)
        expected = expected_members(case)
        stored_sops = set()
        for instance in new:
            back = server.file_of(instance)
            sop = sop_of(back)
            stored_sops.add(sop)
            result.readback_sha[sop] = hashlib.sha256(back).hexdigest()
            sent = expected.get(sop, case.data if case.content_type == "application/dicom" else None)
            if result.path == "cstore":
                sent = None  # compared with the plain Orthanc's C-STORE copy (DCMTK writes its own meta)
            if sent is not None and back != sent:
                result.byte_mismatch += 1
                result.detail = (result.detail + f"; read back {len(back)} B differ from the {len(sent)} B sent")[:600]
            disk = server.disk_file(instance)
            if case.as_received and disk is not None and disk != back and server.plugin:
                result.not_as_received += 1
                result.detail = (result.detail + "; transcoded on disk although its header is invalid")[:600]
            if disk is not None and disk != back:
                checked, equal, why = pixels_equal(back, disk)
                result.pixels_checked += checked
                if checked and not equal:
                    result.pixel_mismatch += 1
                    result.detail = (result.detail + f"; on-disk pixels differ: {why}")[:600]
        if expected:
            result.members_lost = len(set(expected) - stored_sops)
            if result.members_lost:
                result.detail = (result.detail + f"; {result.members_lost} good member(s) not stored")[:600]


def expected_members(case: Case) -> dict[str, bytes]:
    """SOP UID -> bytes of each good DICOM member of a ZIP case (the ones that must be stored)."""
    if case.content_type != "application/zip":
        return {}
    return case.meta.setdefault("good_members", {})


def sop_of(data: bytes) -> str:
    try:
        return str(pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
                   .SOPInstanceUID)
    except Exception:
        return "unreadable-" + hashlib.sha256(data).hexdigest()[:12]


def pixels_equal(received: bytes, on_disk: bytes) -> tuple[int, bool, str]:
    """(checked, equal, why): the on-disk file's pixels (decoded by pydicom with pylibjpeg-openjpeg, not
    the plugin's imagecodecs) against the received file's (within Bits Stored); 0 checked if either does
    not decode."""
    if len(received) > PIXEL_CAP_BYTES:
        return 0, True, "too big to decode here"
    try:
        a = pydicom.dcmread(io.BytesIO(received))
        expected = a.pixel_array
    except Exception:
        return 0, True, "received pixels not decodable"
    try:
        b = pydicom.dcmread(io.BytesIO(on_disk))
        actual = b.pixel_array
    except Exception as error:
        return 1, False, f"on-disk file does not decode: {type(error).__name__}: {error}"[:200]
    if expected.shape != actual.shape:
        return 1, False, f"shape {actual.shape} != {expected.shape}"
    if np.array_equal(expected, actual):
        return 1, True, ""
    bits = int(a.get("BitsStored", 0) or 0)
    if expected.dtype.kind in "iu" and 0 < bits < expected.dtype.itemsize * 8:
        mask = (1 << bits) - 1
        unsigned = np.dtype(f"u{expected.dtype.itemsize}")
        if np.array_equal(expected.view(unsigned) & mask, actual.astype(expected.dtype).view(unsigned) & mask):
            return 1, True, ""
    differing = int(np.count_nonzero(expected != actual))
    return 1, False, f"{differing} of {expected.size} samples differ ({b.file_meta.TransferSyntaxUID})"


def json_safe(results: list[Result]) -> list[dict]:
    out = []
    for r in results:
        item = dict(r.__dict__)
        item["defect"] = r.defect
        out.append(item)
    return json.loads(json.dumps(out, default=str))
