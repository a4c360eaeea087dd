"""The EMR directory over a hospital's FHIR R4 server (Epic, Cerner, OpenEMR, HAPI, Medplum...).

Read-only: patients are changed in the EMR, never here. Look-ups are `Patient?identifier=system|value`
searches; the dialog's search is a name search plus an identifier search. A patient merged away
(`Patient.link` of type `replaced-by`) resolves to the surviving patient.

Mapping to the DICOM patient module:
- name: the HumanName of use `official`, else `usual`, else the first one, as DICOM PN
  `Family^Given^Middle^Prefix^Suffix` (second and further given names are the middle names;
  empty trailing components are dropped, so usually `Family^Given`). DICOM delimiters (^ \\ =)
  and control characters inside a part are removed. Non-ASCII names pass through unchanged
  (the assignment writes them under ISO_IR 192).
- birthDate: kept with the EMR's precision in `Patient.birth_date` (`1948`, `1948-03` or
  `1948-03-07`, as the routes show it); DICOM DA needs a whole date, so a partial date is written
  as an empty Patient's Birth Date ("unknown") rather than an invented day.
- gender: male / female / other / unknown (absent or unrecognised: unknown), DICOM M / F / O.
- the canonical Patient ID is the value of the identifier whose system is `MrnSystem` (one not of
  use `old` when there are several); every other identifier becomes an `Identifier(value, issuer)`
  whose issuer is the DICOM issuer text that `IssuerSystems` maps to its system, else the system
  URI itself (empty without a system). A resource without an MRN cannot be assigned and is skipped.

Every failure (timeout, refused connection, HTTP 5xx, 401/403, anything but a FHIR JSON answer)
raises DirectoryUnavailable saying what failed, never with patient data in the message. After a
transport failure the directory fails at once for `RetryAfterSeconds`, so that a series sent while
the EMR is down costs one timeout, not one per image. Look-ups (hits and misses) are cached.
"""

from __future__ import annotations

import datetime
import logging
import re
import threading
import time
from typing import Callable
from urllib.parse import urljoin, urlsplit

import requests

from ..config import FhirSettings
from ..errors import DirectoryUnavailable, MethodNotAllowed, NeuroNovaError
from .model import GENDERS, Identifier, Patient

log = logging.getLogger("neuronova.directory.fhir")

FHIR_JSON = "application/fhir+json"
MAX_LINK_DEPTH = 5  # replaced-by links followed from one patient
MAX_PAGES = 50  # search pages followed for one search
MAX_CACHE_ENTRIES = 10000
_PN_FORBIDDEN = re.compile(r"[\^\\=\x00-\x1f\x7f]")
_PARTIAL_DATE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


class FhirDirectory:
    """The PatientDirectory protocol over FHIR R4 `Patient` resources."""

    writable = False

    def __init__(self, settings: FhirSettings, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self._base = settings.base_url.rstrip("/") + "/"
        parts = urlsplit(self._base)
        self._origin = (parts.scheme, parts.hostname, parts.port)
        # For messages: the base URL without any user:password@.
        port = f":{parts.port}" if parts.port else ""
        self._where = f"FHIR server {parts.scheme}://{parts.hostname}{port}{parts.path.rstrip('/')}"
        self._issuer_to_system = dict(settings.issuer_systems)
        self._system_to_issuer: dict[str, str] = {}
        for issuer, system in settings.issuer_systems:
            self._system_to_issuer.setdefault(system, issuer)
        self._budget = settings.connect_timeout + settings.read_timeout
        self._clock = clock
        self._local = threading.local()
        self._cache = _LookupCache(clock, self._budget)
        self._state_lock = threading.Lock()
        self._down_until = 0.0
        self._down_reason = ""

    # The PatientDirectory protocol

    def get(self, patient_id: str) -> Patient | None:
        """The patient whose MRN is `patient_id`; a merged-away MRN gives the surviving patient."""
        return self._cache.get_or_load(("get", patient_id), lambda: self._by_mrn(patient_id, self._deadline()),
                                       self.settings.cache_seconds, self.settings.miss_cache_seconds)

    def resolve(self, identifier: str, issuer: str = "") -> Patient | None:
        """The patient known by this identifier: its MRN first, else any other identifier of it."""
        return self._cache.get_or_load(("resolve", identifier, issuer),
                                       lambda: self._resolve(identifier, issuer, self._deadline()),
                                       self.settings.cache_seconds, self.settings.miss_cache_seconds)

    def search(self, text: str, limit: int) -> tuple[list[Patient], int]:
        """Name search (FHIR `name`, the server's string matching) plus exact identifier search.

        Patients found by identifier come first; merged-away records are left out (their
        survivor is listed instead when the identifier search found them). `total` is the
        server's Bundle.total for the name search (less the records left out that were seen),
        plus the identifier matches the name search did not list.
        """
        deadline = self._deadline()
        text = text.strip()
        if not text:
            return self._search_patients({}, limit, deadline, follow_replaced=False)
        by_identifier, _ = self._search_patients({"identifier": _escape(text)}, limit, deadline, follow_replaced=True)
        by_name, name_total = self._search_patients({"name": _escape(text)}, limit, deadline, follow_replaced=False)
        named = {patient.patient_id for patient in by_name}
        merged, seen = [], set()
        for patient in by_identifier + by_name:
            if patient.patient_id not in seen:
                seen.add(patient.patient_id)
                merged.append(patient)
        total = name_total + sum(patient.patient_id not in named for patient in by_identifier)
        return merged[:limit], max(total, len(merged[:limit]))

    def put(self, patient: Patient) -> bool:
        raise MethodNotAllowed("this EMR directory is read-only (FHIR backend): change patients in the EMR itself",
                               ("GET",))

    def close(self) -> None:
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()

    # Look-ups

    def _by_mrn(self, mrn: str, deadline: float) -> Patient | None:
        return self._one(self._search_all({"identifier": f"{_escape(self.settings.mrn_system)}|{_escape(mrn)}"},
                                          deadline), deadline)

    def _resolve(self, identifier: str, issuer: str, deadline: float) -> Patient | None:
        patient = self._by_mrn(identifier, deadline)
        if patient is not None:
            return patient
        system = self._issuer_to_system.get(issuer, issuer) if issuer else ""
        if system == self.settings.mrn_system:
            return None  # the MRN search above was that search
        token = f"{_escape(system)}|{_escape(identifier)}" if system else _escape(identifier)
        return self._one(self._search_all({"identifier": token}, deadline), deadline)

    def _one(self, resources: list[dict], deadline: float) -> Patient | None:
        """The one surviving patient these matches stand for; several different ones are an EMR error."""
        survivors = self._survivors(resources, deadline)
        patients = {}
        for resource in survivors:
            patient = self._to_patient(resource)
            if patient is not None:
                patients.setdefault(patient.patient_id, patient)
        if len(patients) > 1:
            raise self._unavailable(f"{len(patients)} different patients in the EMR carry this identifier; "
                                    "the EMR records need merging", trip=False)
        return next(iter(patients.values()), None)

    def _survivors(self, resources: list[dict], deadline: float) -> list[dict]:
        """Each resource, or the patient that replaced it, following replaced-by links; no duplicates."""
        result, ids = [], set()
        for resource in resources:
            survivor = self._follow_replaced_by(resource, deadline)
            key = survivor.get("id") or id(survivor)
            if key not in ids:
                ids.add(key)
                result.append(survivor)
        return result

    def _follow_replaced_by(self, resource: dict, deadline: float) -> dict:
        visited = {resource.get("id")}
        for _ in range(MAX_LINK_DEPTH):
            other = self._replaced_by(resource)
            if other is None:
                return resource
            resource = self._read_reference(other, deadline)
            if resource.get("id") in visited:
                raise self._unavailable("Patient.link replaced-by links form a loop", trip=False)
            visited.add(resource.get("id"))
        if self._replaced_by(resource) is None:
            return resource
        raise self._unavailable(f"Patient.link replaced-by chain longer than {MAX_LINK_DEPTH}", trip=False)

    def _read_reference(self, other: dict, deadline: float) -> dict:
        reference = other.get("reference")
        if isinstance(reference, str) and reference:
            url = urljoin(self._base, reference.split("#")[0])
            parts = urlsplit(url)
            if (parts.scheme, parts.hostname, parts.port) != self._origin:
                raise self._unavailable("a Patient.link replaced-by reference points outside BaseUrl", trip=False)
            resource = self._get_json(url, None, deadline, "GET replaced-by Patient", allow_404=True)
            if resource is None:
                raise self._unavailable("a Patient.link replaced-by reference names a patient the EMR does not "
                                        "have (HTTP 404)", trip=False)
            if resource.get("resourceType") != "Patient":
                raise self._unavailable("malformed answer: a replaced-by reference did not give a Patient",
                                        trip=False)
            return resource
        identifier = other.get("identifier")
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            system = identifier.get("system") if isinstance(identifier.get("system"), str) else ""
            token = f"{_escape(system)}|{_escape(identifier['value'])}" if system else _escape(identifier["value"])
            found = self._search_all({"identifier": token}, deadline)
            if len(found) == 1:
                return found[0]
            raise self._unavailable(f"a Patient.link replaced-by identifier matches {len(found)} patients",
                                    trip=False)
        raise self._unavailable("malformed Patient: a replaced-by link has neither reference nor identifier",
                                trip=False)

    def _search_all(self, params: dict, deadline: float, limit: int = 100) -> list[dict]:
        resources: list[dict] = []
        for page, _ in self._pages(params, limit, deadline):
            resources.extend(page)
            if len(resources) >= limit:
                break
        return resources[:limit]

    def _search_patients(self, params: dict, limit: int, deadline: float,
                         follow_replaced: bool) -> tuple[list[Patient], int]:
        """Up to `limit` assignable patients, reading pages until there are enough: (patients, total)."""
        patients: list[Patient] = []
        ids: set[str] = set()
        total, left_out = None, 0
        for page, total in self._pages(params, limit, deadline):
            if follow_replaced:
                page = self._survivors(page, deadline)
            for resource in page:
                patient = None if not follow_replaced and self._replaced_by(resource) else self._to_patient(resource)
                if patient is None or patient.patient_id in ids:
                    left_out += 1  # merged away, without MRN, or listed already
                    continue
                ids.add(patient.patient_id)
                patients.append(patient)
            if len(patients) >= limit:
                break
        total = len(patients) if total is None else max(total - left_out, len(patients))
        return patients[:limit], total

    def _pages(self, params: dict, page_size: int, deadline: float):
        """Yield (Patient resources of one page, Bundle.total of the first page) following `next` links."""
        url: str | None = self._base + "Patient"
        query: dict | None = {**params, "_count": str(page_size)}
        total = None
        for page in range(MAX_PAGES):
            bundle = self._get_json(url, query, deadline, "GET Patient search")
            if bundle.get("resourceType") != "Bundle":
                raise self._unavailable(f"malformed answer: a Patient search gave "
                                        f"{_kind(bundle.get('resourceType'))}, not a Bundle", trip=False)
            if page == 0:
                total = bundle.get("total")
                if total is not None and (not isinstance(total, int) or isinstance(total, bool) or total < 0):
                    raise self._unavailable("malformed Bundle: total is not a count", trip=False)
            resources = self._bundle_patients(bundle)
            url, query = self._next_link(bundle), None
            yield resources, total
            if url is None:
                return

    def _bundle_patients(self, bundle: dict) -> list[dict]:
        entries = bundle.get("entry", [])
        if not isinstance(entries, list):
            raise self._unavailable("malformed Bundle: entry is not a list", trip=False)
        resources = []
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("resource", {}), dict):
                raise self._unavailable("malformed Bundle: an entry is not an object with a resource", trip=False)
            resource = entry.get("resource")
            mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry.get("search"), dict) else "match"
            if resource is None or mode != "match" or resource.get("resourceType") != "Patient":
                continue  # included resources, OperationOutcome warnings
            resources.append(resource)
        return resources

    def _next_link(self, bundle: dict) -> str | None:
        links = bundle.get("link", [])
        if not isinstance(links, list):
            raise self._unavailable("malformed Bundle: link is not a list", trip=False)
        for link in links:
            if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
                url = urljoin(self._base, link["url"])
                parts = urlsplit(url)
                if (parts.scheme, parts.hostname, parts.port) != self._origin:
                    # Credentials go to BaseUrl's server only.
                    log.warning("%s: a search's next link points to another server; paging stopped", self._where)
                    return None
                return url
        return None

    # Mapping

    def _replaced_by(self, resource: dict) -> dict | None:
        try:
            return replaced_by(resource)
        except ValueError as error:
            raise self._unavailable(f"malformed Patient: {error}", trip=False) from None

    def _to_patient(self, resource: dict) -> Patient | None:
        try:
            return patient_from_fhir(resource, self.settings.mrn_system, self._system_to_issuer)
        except ValueError as error:
            raise self._unavailable(f"malformed Patient: {error}", trip=False) from None

    # HTTP

    def _deadline(self) -> float:
        return self._clock() + self._budget

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.headers.update({"Accept": FHIR_JSON, "User-Agent": "NeuroNova-ingest"})
            if self.settings.auth_type == "bearer":
                session.headers["Authorization"] = f"Bearer {self.settings.token}"
            elif self.settings.auth_type == "basic":
                session.auth = (self.settings.username, self.settings.password)
            self._local.session = session
        return session

    def _get_json(self, url: str, params: dict | None, deadline: float, what: str,
                  allow_404: bool = False) -> dict | None:
        """GET one FHIR JSON object. Every failure becomes DirectoryUnavailable naming `what` failed."""
        with self._state_lock:
            down_for = self._down_until - self._clock()
            reason = self._down_reason
        if down_for > 0:
            raise DirectoryUnavailable(f"{self._where}: {reason}; not retried for another {down_for:.0f}s")
        remaining = deadline - self._clock()
        if remaining <= 0:
            raise self._unavailable(f"{what}: no complete answer within {self._budget:g}s")
        timeout = (min(self.settings.connect_timeout, remaining), min(self.settings.read_timeout, remaining))
        log.debug("%s %s params=%s", what, url, params)
        try:
            response = self._session().get(url, params=params, timeout=timeout)
        except requests.ConnectTimeout:
            raise self._unavailable(f"{what}: no connection within {timeout[0]:g}s") from None
        except requests.ReadTimeout:
            raise self._unavailable(f"{what}: no answer within {timeout[1]:g}s") from None
        except requests.RequestException as error:  # the message would carry the query: summarise it
            raise self._unavailable(f"{what}: {_connection_failure(error)}") from None
        status = response.status_code
        if status == 404 and allow_404:
            return None
        if status in (401, 403):
            raise self._unavailable(f"{what}: HTTP {status}, the EMR refused our credentials "
                                    "(NeuroNova.Directory.Fhir.Auth)")
        if status >= 500:
            raise self._unavailable(f"{what}: HTTP {status} from the EMR")
        if status != 200:
            log.debug("%s answered HTTP %d: %s", what, status, response.text[:500])
            raise self._unavailable(f"{what}: HTTP {status}", trip=False)
        try:
            payload = response.json()
        except ValueError:
            raise self._unavailable(f"{what}: the answer is not JSON "
                                    f"(Content-Type {response.headers.get('Content-Type', 'none')})", trip=False) from None
        if not isinstance(payload, dict):
            raise self._unavailable(f"{what}: malformed answer, a JSON {_kind(payload)} instead of a resource",
                                    trip=False)
        return payload

    def _unavailable(self, message: str, trip: bool = True) -> DirectoryUnavailable:
        """The error to raise; `trip` (the server is unreachable or refuses us) makes calls fail fast for a while."""
        if trip and self.settings.retry_after_seconds > 0:
            with self._state_lock:
                self._down_until = self._clock() + self.settings.retry_after_seconds
                self._down_reason = message
        log.warning("%s: %s", self._where, message)
        return DirectoryUnavailable(f"{self._where}: {message}")


class _Flight:
    """One look-up in progress; other threads asking for the same key wait for its result."""

    def __init__(self):
        self.done = threading.Event()
        self.value: Patient | None = None
        self.error: NeuroNovaError | None = None


class _LookupCache:
    """Look-up results by key for a while (hits longer than misses); errors are not cached here."""

    def __init__(self, clock: Callable[[], float], wait_limit: float):
        self._clock = clock
        self._wait_limit = wait_limit
        self._lock = threading.Lock()
        self._entries: dict[tuple, tuple[float, Patient | None]] = {}
        self._flights: dict[tuple, _Flight] = {}

    def get_or_load(self, key: tuple, load: Callable[[], Patient | None], hit_seconds: float,
                    miss_seconds: float) -> Patient | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > self._clock():
                return entry[1]
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            if not flight.done.wait(self._wait_limit + 1):
                raise DirectoryUnavailable("EMR directory: the same look-up is still waiting for the EMR")
            if flight.error is not None:
                raise DirectoryUnavailable(str(flight.error))
            return flight.value
        loaded = False
        try:
            flight.value = load()
            loaded = True
        except NeuroNovaError as error:
            flight.error = error
            raise
        except Exception as error:  # a bug: the waiters must not take it for "unknown patient"
            flight.error = DirectoryUnavailable(f"EMR directory: internal error: {type(error).__name__}")
            raise
        finally:
            with self._lock:
                del self._flights[key]
                seconds = hit_seconds if flight.value is not None else miss_seconds
                if loaded and seconds > 0:
                    if len(self._entries) >= MAX_CACHE_ENTRIES:
                        self._prune()
                    self._entries[key] = (self._clock() + seconds, flight.value)
            flight.done.set()
        return flight.value

    def _prune(self) -> None:
        now = self._clock()
        self._entries = {key: entry for key, entry in self._entries.items() if entry[0] > now}
        if len(self._entries) >= MAX_CACHE_ENTRIES:
            self._entries.clear()


# FHIR -> DICOM mapping, pure functions

def patient_from_fhir(resource: dict, mrn_system: str, system_to_issuer: dict[str, str]) -> Patient | None:
    """The directory's Patient for a FHIR Patient resource; None when it has no MRN.

    Raises ValueError for a resource that is not a well-formed Patient.
    """
    if not isinstance(resource, dict) or resource.get("resourceType") != "Patient":
        raise ValueError("not a Patient resource")
    identifiers = _list_of_objects(resource, "identifier")
    mrn = _mrn(identifiers, mrn_system)
    if mrn is None:
        log.debug("Patient/%s has no identifier of system %s; skipped", resource.get("id"), mrn_system)
        return None
    others, seen = [], {(mrn, mrn_system)}
    for identifier in identifiers:
        value, system = _text(identifier.get("value")), _text(identifier.get("system"))
        if not value or (value, system) in seen:
            continue
        seen.add((value, system))
        others.append(Identifier(value, system_to_issuer.get(system, system)))
    return Patient(
        patient_id=mrn,
        name=dicom_person_name(_list_of_objects(resource, "name")),
        birth_date=fhir_birth_date(resource.get("birthDate")),
        gender=resource.get("gender") if resource.get("gender") in GENDERS else "unknown",
        other_ids=tuple(others),
    )


def replaced_by(resource: dict) -> dict | None:
    """The `other` of the resource's first Patient.link of type replaced-by, if any."""
    links = resource.get("link", [])
    if not isinstance(links, list):
        raise ValueError("link is not a list")
    for link in links:
        if isinstance(link, dict) and link.get("type") == "replaced-by":
            other = link.get("other")
            return other if isinstance(other, dict) else {}
    return None


def dicom_person_name(names: list[dict]) -> str:
    """DICOM PN `Family^Given^Middle^Prefix^Suffix` from the preferred HumanName, trailing empties dropped."""
    if not names:
        return ""
    name = next((n for use in ("official", "usual") for n in names if n.get("use") == use), names[0])
    family = _pn_part(name.get("family"))
    given = [_pn_part(part) for part in _strings(name, "given")]
    given = [part for part in given if part]
    components = [
        family,
        given[0] if given else "",
        " ".join(given[1:]),
        " ".join(filter(None, (_pn_part(part) for part in _strings(name, "prefix")))),
        " ".join(filter(None, (_pn_part(part) for part in _strings(name, "suffix")))),
    ]
    if not family and not given:
        components = [_pn_part(name.get("text")), "", "", components[3], components[4]]
    while components and not components[-1]:
        components.pop()
    return "^".join(components)


def fhir_birth_date(value: object) -> str | None:
    """FHIR `date` (YYYY, YYYY-MM or YYYY-MM-DD) kept at its precision; None when absent or invalid."""
    if not isinstance(value, str):
        return None
    match = _PARTIAL_DATE.fullmatch(value.strip())
    if not match:
        return None
    year, month, day = match.groups()
    try:
        datetime.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return None
    return match.group(0)


def _mrn(identifiers: list[dict], mrn_system: str) -> str | None:
    candidates = [identifier for identifier in identifiers
                  if identifier.get("system") == mrn_system and _text(identifier.get("value"))]
    current = [identifier for identifier in candidates if identifier.get("use") != "old"]
    chosen = (current or candidates or [None])[0]
    return _text(chosen.get("value")) if chosen else None


def _list_of_objects(resource: dict, key: str) -> list[dict]:
    value = resource.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(f"{key} is not a list of objects")
    return value


def _strings(element: dict, key: str) -> list[str]:
    value = element.get(key, [])
    if isinstance(value, str):  # lenient: a single string where FHIR wants a list
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"HumanName.{key} is not a list")
    return [item for item in value if isinstance(item, str)]


def _pn_part(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return " ".join(_PN_FORBIDDEN.sub(" ", value).split())


def _text(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def _escape(value: str) -> str:
    """A FHIR search parameter value: backslash-escape the characters search syntax gives a meaning."""
    return re.sub(r"([\\,$|])", r"\\\1", value)


def _kind(value: object) -> str:
    if isinstance(value, str):
        return repr(value)[:40]
    return {dict: "object", list: "array", str: "string", type(None): "nothing"}.get(type(value), type(value).__name__)


def _connection_failure(error: requests.RequestException) -> str:
    """What went wrong, without the URL (its query holds identifiers or names)."""
    text = str(error)
    if "Connection refused" in text:
        return "connection refused"
    if "Name or service not known" in text or "Failed to resolve" in text or "NameResolution" in text:
        return "host name does not resolve"
    if isinstance(error, requests.exceptions.SSLError):
        return "TLS error"
    if "timed out" in text:
        return "timed out"
    if "Connection reset" in text or "RemoteDisconnected" in text or "aborted" in text:
        return "connection closed by the server"
    return f"connection failed ({type(error).__name__})"
