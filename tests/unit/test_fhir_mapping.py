"""The FHIR backend's mapping to DICOM and its error translation.

Mapping is tested on plain resources; the HTTP behaviour (errors, paging, caching, replaced-by
links) against a small stub server on loopback that answers what each test scripts. The real
FHIR engine is exercised by tests/integration/test_fhir_directory.py.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from neuronova.config import FhirSettings, load_settings
from neuronova.directory.fhir import FhirDirectory, dicom_person_name, fhir_birth_date, patient_from_fhir
from neuronova.directory.model import Identifier, Patient
from neuronova.errors import ConfigError, DirectoryUnavailable, MethodNotAllowed

MRN = "urn:oid:1.2.410.100.1"
CT1 = "urn:neuronova:ct1"


def resource(id_="p1", mrn="P-1", **fields) -> dict:
    base = {"resourceType": "Patient", "id": id_, "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": "Hong", "given": ["Gildong"]}], "gender": "male", "birthDate": "1980-01-15"}
    base.update(fields)
    return base


def bundle(*resources, total=None, next_url=None) -> dict:
    answer = {"resourceType": "Bundle", "type": "searchset",
              "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]}
    if total is not None:
        answer["total"] = total
    if next_url:
        answer["link"] = [{"relation": "next", "url": next_url}]
    return answer


# Mapping

def test_official_name_first_then_usual_then_first():
    names = [{"use": "nickname", "family": "Nick", "given": ["N"]}, {"use": "usual", "family": "Usual", "given": ["U"]},
             {"use": "official", "family": "Hong", "given": ["Gildong"]}]
    assert dicom_person_name(names) == "Hong^Gildong"
    assert dicom_person_name(names[:2]) == "Usual^U"
    assert dicom_person_name(names[:1]) == "Nick^N"
    assert dicom_person_name([]) == ""


def test_several_given_names_become_middle_names_prefix_and_suffix_follow():
    assert dicom_person_name([{"family": "Smith", "given": ["John", "Ronald", "Reuel"]}]) == "Smith^John^Ronald Reuel"
    assert dicom_person_name([{"family": "Smith", "given": ["John"], "prefix": ["Dr."], "suffix": ["Jr."]}]) == \
        "Smith^John^^Dr.^Jr."
    assert dicom_person_name([{"family": "Cher"}]) == "Cher"
    assert dicom_person_name([{"text": "Baby Boy Hong"}]) == "Baby Boy Hong"


def test_dicom_delimiters_and_control_characters_are_removed_from_parts():
    assert dicom_person_name([{"family": "O^Brien\\=", "given": ["Ann\nMarie"]}]) == "O Brien^Ann Marie"


def test_hangul_names_pass_through():
    assert dicom_person_name([{"use": "official", "family": "홍", "given": ["길동"]}]) == "홍^길동"
    patient = patient_from_fhir(resource(name=[{"family": "김", "given": ["철수"]}]), MRN, {})
    assert patient.name == "김^철수" and not patient.name.isascii()


@pytest.mark.parametrize("value, iso, dicom", [
    ("1980-01-15", "1980-01-15", "19800115"),
    ("1948-03", "1948-03", ""),
    ("1948", "1948", ""),
    ("1980-02-30", None, ""),
    ("15/01/1980", None, ""),
    (None, None, ""),
    (19800115, None, ""),
])
def test_birth_dates_full_partial_and_invalid(value, iso, dicom):
    assert fhir_birth_date(value) == iso
    patient = patient_from_fhir(resource(birthDate=value), MRN, {})
    assert patient.birth_date == iso and patient.dicom_birth_date == dicom


@pytest.mark.parametrize("gender, expected, sex", [
    ("male", "male", "M"), ("female", "female", "F"), ("other", "other", "O"), ("unknown", "unknown", "O"),
    (None, "unknown", "O"), ("M", "unknown", "O"),
])
def test_gender(gender, expected, sex):
    patient = patient_from_fhir(resource(gender=gender), MRN, {})
    assert (patient.gender, patient.dicom_sex) == (expected, sex)


def test_identifiers_canonical_mrn_and_others_with_issuers_mapped_back():
    identifiers = [
        {"system": "urn:other-hospital", "value": "X-77"},
        {"use": "old", "system": MRN, "value": "P-OLD"},
        {"use": "official", "system": MRN, "value": "P-1"},
        {"system": CT1, "value": "CT-55"},
        {"value": "NOSYS"},
        {"system": CT1},  # no value: ignored
    ]
    patient = patient_from_fhir(resource(identifier=identifiers), MRN, {CT1: "CT1_LOCAL", MRN: "HOSPITAL"})
    assert patient.patient_id == "P-1"
    assert patient.other_ids == (Identifier("X-77", "urn:other-hospital"), Identifier("P-OLD", "HOSPITAL"),
                                 Identifier("CT-55", "CT1_LOCAL"), Identifier("NOSYS", ""))
    assert patient.to_json()["other_ids"][2] == {"id": "CT-55", "issuer": "CT1_LOCAL"}


def test_a_patient_without_mrn_cannot_be_assigned():
    assert patient_from_fhir(resource(identifier=[{"system": CT1, "value": "CT-1"}]), MRN, {}) is None
    only_old = patient_from_fhir(resource(identifier=[{"use": "old", "system": MRN, "value": "P-9"}]), MRN, {})
    assert only_old.patient_id == "P-9"


@pytest.mark.parametrize("bad", [
    {"resourceType": "Observation"},
    resource(identifier={"system": MRN, "value": "P-1"}),
    resource(name="Hong^Gildong"),
    resource(name=[{"family": "Hong", "given": 5}]),
])
def test_malformed_patients_raise_value_error(bad):
    with pytest.raises(ValueError):
        patient_from_fhir(bad, MRN, {})


# Configuration

def _config(fhir: dict, backend: str = "fhir") -> dict:
    return {"NeuroNova": {"Directory": {"Backend": backend, "Fhir": fhir}}}


def test_configuration_parses_into_frozen_settings_and_hides_secrets():
    settings = load_settings(_config({
        "BaseUrl": "https://emr.example/fhir/R4/", "MrnSystem": MRN,
        "Auth": {"Type": "bearer", "Token": "s3cret"}, "IssuerSystems": {"CT1_LOCAL": CT1},
        "ConnectTimeoutSeconds": 1.5, "ReadTimeoutSeconds": 4, "CacheSeconds": 30, "MissCacheSeconds": 0,
        "RetryAfterSeconds": 2})).directory
    assert settings.backend == "fhir"
    fhir = settings.fhir
    assert (fhir.base_url, fhir.mrn_system, fhir.auth_type, fhir.token) == \
        ("https://emr.example/fhir/R4/", MRN, "bearer", "s3cret")
    assert fhir.issuer_systems == (("CT1_LOCAL", CT1),)
    assert (fhir.connect_timeout, fhir.read_timeout, fhir.cache_seconds, fhir.miss_cache_seconds,
            fhir.retry_after_seconds) == (1.5, 4.0, 30.0, 0.0, 2.0)
    assert "s3cret" not in repr(fhir)


def test_embedded_backend_ignores_but_checks_the_fhir_section():
    assert load_settings(_config({}, backend="embedded")).directory.fhir is None
    with pytest.raises(ConfigError, match=r"NeuroNova\.Directory\.Fhir\.Bogus: unknown"):
        load_settings(_config({"Bogus": 1}, backend="embedded"))


@pytest.mark.parametrize("fhir, message", [
    ({"MrnSystem": MRN}, r"Fhir\.BaseUrl: required"),
    ({"BaseUrl": "http://h/fhir"}, r"Fhir\.MrnSystem: required"),
    ({"BaseUrl": "ftp://h", "MrnSystem": MRN}, r"Fhir\.BaseUrl: must be an http"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "Auth": {"Type": "bearer"}}, r"Auth\.Token: required"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "Auth": {"Type": "basic"}}, r"Auth\.Username: required"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "Auth": {"Type": "oauth"}}, r"Auth\.Type: must be"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "Auth": {"Kind": "x"}}, r"Auth\.Kind: unknown"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "ReadTimeoutSeconds": 0}, r"ReadTimeoutSeconds: must be a positive"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "CacheSeconds": "60"}, r"CacheSeconds: must be a number"),
    ({"BaseUrl": "http://h", "MrnSystem": MRN, "IssuerSystems": {"CT": 3}}, r"IssuerSystems: must map"),
])
def test_bad_fhir_configuration_names_the_key(fhir, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(_config(fhir))


def test_unknown_backend_is_refused():
    with pytest.raises(ConfigError, match=r"Backend: must be 'embedded' or 'fhir'"):
        load_settings({"NeuroNova": {"Directory": {"Backend": "hl7"}}})


# HTTP behaviour against a scripted stub server

class StubFhir:
    """Loopback HTTP server; `routes` maps a path to a function(query) -> (status, body, delay)."""

    def __init__(self):
        self.routes: dict[str, object] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                parts = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(parts.query).items()}
                stub.requests.append((parts.path, query, dict(self.headers)))
                route = stub.routes.get(parts.path)
                status, body, delay = route(query) if route else (404, {"resourceType": "OperationOutcome"}, 0)
                time.sleep(delay)
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/fhir+json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except OSError:
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/fhir"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def patients(self, handler):
        self.routes["/fhir/Patient"] = handler

    def searches(self) -> list[dict]:
        return [query for path, query, _ in self.requests if path == "/fhir/Patient"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    server = StubFhir()
    yield server
    server.close()


def directory_for(url: str, **overrides) -> FhirDirectory:
    values = dict(base_url=url, mrn_system=MRN, connect_timeout=1.0, read_timeout=1.0, retry_after_seconds=0,
                  issuer_systems=(("CT1_LOCAL", CT1),))
    values.update(overrides)
    return FhirDirectory(FhirSettings(**values))


def by_identifier(table: dict[str, list[dict]]):
    """A Patient search handler answering identifier searches from a table."""
    def handler(query):
        found = table.get(query.get("identifier", ""), [])
        return 200, bundle(*found, total=len(found)), 0
    return handler


def test_get_searches_the_mrn_system_and_sends_accept_and_bearer_token(stub):
    stub.patients(by_identifier({f"{MRN}|P-1": [resource()]}))
    directory = directory_for(stub.url, auth_type="bearer", token="tok")
    assert directory.get("P-1") == Patient("P-1", "Hong^Gildong", "1980-01-15", "male")
    assert directory.get("P-404") is None
    path, query, headers = stub.requests[0]
    assert query["identifier"] == f"{MRN}|P-1"
    assert headers["Accept"] == "application/fhir+json"
    assert headers["Authorization"] == "Bearer tok"


def test_basic_authentication(stub):
    stub.patients(by_identifier({}))
    directory_for(stub.url, auth_type="basic", username="ris", password="pw").get("P-1")
    assert stub.requests[0][2]["Authorization"] == "Basic cmlzOnB3"


def test_resolve_tries_the_mrn_then_the_issuers_system_then_any_system(stub):
    local = resource(identifier=[{"system": MRN, "value": "P-1"}, {"system": CT1, "value": "CT-55"}])
    stub.patients(by_identifier({f"{CT1}|CT-55": [local], "CT-55": [local]}))
    directory = directory_for(stub.url)
    assert directory.resolve("CT-55", "CT1_LOCAL").patient_id == "P-1"
    assert [q["identifier"] for q in stub.searches()] == [f"{MRN}|CT-55", f"{CT1}|CT-55"]
    assert directory.resolve("CT-55").patient_id == "P-1"
    assert stub.searches()[-1]["identifier"] == "CT-55"
    # An issuer not in IssuerSystems is taken as the system itself: no match here.
    assert directory.resolve("CT-55", "urn:elsewhere") is None
    assert stub.searches()[-1]["identifier"] == "urn:elsewhere|CT-55"


def test_search_values_are_escaped(stub):
    stub.patients(by_identifier({}))
    directory_for(stub.url).resolve("A,B|C$D\\E")
    assert stub.searches()[0]["identifier"] == f"{MRN}|A\\,B\\|C\\$D\\\\E"


def test_replaced_by_resolves_to_the_surviving_patient(stub):
    survivor = resource("new", "P-NEW", name=[{"family": "Kim", "given": ["Cheolsu"]}])
    merged = resource("old", "P-OLD", link=[{"type": "replaced-by", "other": {"reference": "Patient/new"}}])
    stub.patients(by_identifier({f"{MRN}|P-OLD": [merged]}))
    stub.routes["/fhir/Patient/new"] = lambda query: (200, survivor, 0)
    patient = directory_for(stub.url).get("P-OLD")
    assert (patient.patient_id, patient.name) == ("P-NEW", "Kim^Cheolsu")


def _linked(id_: str, to: str | None) -> dict:
    links = [{"type": "replaced-by", "other": {"reference": f"Patient/{to}"}}] if to else []
    return resource(id_, id_.upper(), link=links)


def test_replaced_by_chains_loops_dangling_links_and_depth(stub):
    records = [_linked("a0", "a1"), _linked("a1", "a2"), _linked("a2", None),  # a chain of two links
               _linked("b1", "b2"), _linked("b2", "b1"),  # a loop
               _linked("c1", "missing"),  # a dangling link
               *[_linked(f"d{i}", f"d{i + 1}") for i in range(6)], _linked("d6", None)]  # six links
    for record in records:
        stub.routes[f"/fhir/Patient/{record['id']}"] = (lambda record: lambda query: (200, record, 0))(record)
    stub.patients(by_identifier({f"{MRN}|{r['id'].upper()}": [r] for r in records}))
    directory = directory_for(stub.url)
    assert directory.get("A0").patient_id == "A2"
    with pytest.raises(DirectoryUnavailable, match="loop"):
        directory.get("B1")
    with pytest.raises(DirectoryUnavailable, match="HTTP 404"):
        directory.get("C1")
    assert directory.get("D1").patient_id == "D6"  # five links: followed
    with pytest.raises(DirectoryUnavailable, match="longer than 5"):
        directory.get("D0")


def test_replaced_by_reference_to_another_server_is_not_followed(stub):
    merged = resource("old", "P-OLD", link=[{"type": "replaced-by",
                                             "other": {"reference": "https://elsewhere.example/fhir/Patient/x"}}])
    stub.patients(by_identifier({f"{MRN}|P-OLD": [merged]}))
    with pytest.raises(DirectoryUnavailable, match="outside BaseUrl"):
        directory_for(stub.url).get("P-OLD")


def test_two_different_patients_with_one_identifier_are_an_emr_error(stub):
    stub.patients(by_identifier({"CT-1": [resource("a", "P-A"), resource("b", "P-B")]}))
    with pytest.raises(DirectoryUnavailable, match="2 different patients"):
        directory_for(stub.url).resolve("CT-1")


def test_search_merges_identifier_and_name_searches_and_follows_next_links(stub):
    people = [resource(f"h{i}", f"H-{i}", name=[{"family": "Hong", "given": [f"G{i}"]}]) for i in range(7)]
    merged = resource("old", "H-OLD", link=[{"type": "replaced-by", "other": {"reference": "Patient/h0"}}])
    named = [people[0], merged] + people[1:]

    def handler(query):
        if "identifier" in query:
            return 200, bundle(people[3], total=1), 0
        offset = int(query.get("_offset", 0))
        page = named[offset:offset + 3]
        more = f"{stub.url}/Patient?name=hong&_offset={offset + 3}" if offset + 3 < len(named) else None
        return 200, bundle(*page, total=len(named), next_url=more), 0

    stub.patients(handler)
    patients, total = directory_for(stub.url).search("hong", 5)
    assert [p.patient_id for p in patients] == ["H-3", "H-0", "H-1", "H-2", "H-4"]
    assert total == 7  # 8 name matches, one merged away
    name_searches = [q for q in stub.searches() if "name" in q]
    assert name_searches == [{"name": "hong", "_count": "5"}, {"name": "hong", "_offset": "3"}]


def test_search_total_without_bundle_total_is_the_count(stub):
    stub.patients(lambda query: (200, bundle(resource()), 0))
    assert directory_for(stub.url).search("", 10) == ([Patient("P-1", "Hong^Gildong", "1980-01-15", "male")], 1)


def test_next_link_to_another_server_is_not_followed(stub):
    stub.patients(lambda query: (200, bundle(resource(), total=5, next_url="http://elsewhere.example/Patient?p=2"), 0))
    patients, total = directory_for(stub.url).search("", 10)
    assert len(patients) == 1 and total == 5 and len(stub.requests) == 1


def test_put_is_method_not_allowed():
    directory = directory_for("http://127.0.0.1:9/fhir")
    assert directory.writable is False
    with pytest.raises(MethodNotAllowed) as raised:
        directory.put(Patient("P-1", "A^B", None, "male"))
    assert raised.value.allow == ("GET",) and raised.value.http_status == 405


@pytest.mark.parametrize("status, body, message", [
    (500, {"resourceType": "OperationOutcome"}, "HTTP 500 from the EMR"),
    (503, b"busy", "HTTP 503 from the EMR"),
    (401, {"resourceType": "OperationOutcome"}, "HTTP 401, the EMR refused our credentials"),
    (403, {}, "HTTP 403"),
    (400, {"resourceType": "OperationOutcome", "issue": [{"diagnostics": "P-SECRET"}]}, "HTTP 400"),
    (200, b"<html>login</html>", "not JSON"),
    (200, [1, 2], "a JSON array instead of a resource"),
    (200, {"resourceType": "Patient"}, "not a Bundle"),
    (200, {"resourceType": "Bundle", "entry": {"resource": {}}}, "entry is not a list"),
    (200, {"resourceType": "Bundle", "entry": ["x"]}, "an entry is not an object"),
    (200, {"resourceType": "Bundle", "total": "many"}, "total is not a count"),
    (200, bundle(resource(identifier="P-1")), "malformed Patient: identifier is not a list"),
    (200, bundle(resource(link={"type": "replaced-by"})), "malformed Patient: link is not a list"),
])
def test_failures_become_directory_unavailable_without_patient_data(stub, caplog, status, body, message):
    stub.patients(lambda query: (status, body, 0))
    directory = directory_for(stub.url)
    for call in (lambda: directory.get("P-SECRET"), lambda: directory.search("SecretName", 10)):
        with pytest.raises(DirectoryUnavailable) as raised:
            call()
        assert message in str(raised.value) and "FHIR server http://127.0.0.1" in str(raised.value)
        assert "SECRET" not in str(raised.value).upper().replace("FHIR SERVER", "")
    assert not [r for r in caplog.records if r.levelname != "DEBUG" and "ecret" in r.getMessage()]


def test_connection_refused_and_timeouts(stub):
    closed = StubFhir()
    closed.close()
    with pytest.raises(DirectoryUnavailable, match="connection refused"):
        directory_for(closed.url).get("P-1")
    stub.patients(lambda query: (200, bundle(resource()), 2.0))
    started = time.monotonic()
    with pytest.raises(DirectoryUnavailable, match=r"no answer within 0\.3s"):
        directory_for(stub.url, read_timeout=0.3).get("P-1")
    assert time.monotonic() - started < 1.5


def test_after_a_failure_calls_fail_at_once_until_retry_after(stub):
    now = [100.0]
    stub.patients(lambda query: (503, b"down", 0))
    directory = directory_for(stub.url, retry_after_seconds=10)
    directory._clock = lambda: now[0]
    with pytest.raises(DirectoryUnavailable, match="HTTP 503"):
        directory.get("P-1")
    stub.patients(by_identifier({f"{MRN}|P-1": [resource()]}))
    with pytest.raises(DirectoryUnavailable, match="not retried for another 10s"):
        directory.search("x", 5)
    assert len(stub.requests) == 1
    now[0] += 11
    assert directory.get("P-1").patient_id == "P-1"


def test_hits_and_misses_are_cached_for_their_own_lifetimes(stub):
    now = [0.0]
    stub.patients(by_identifier({f"{MRN}|P-1": [resource()]}))
    directory = FhirDirectory(FhirSettings(base_url=stub.url, mrn_system=MRN, cache_seconds=60,
                                           miss_cache_seconds=5), clock=lambda: now[0])
    for _ in range(500):
        assert directory.get("P-1").patient_id == "P-1"
        assert directory.get("P-2") is None
    assert len(stub.requests) == 2
    now[0] = 6  # the miss expired, the hit did not
    directory.get("P-1"), directory.get("P-2")
    assert len(stub.requests) == 3
    now[0] = 61
    directory.get("P-1")
    assert len(stub.requests) == 4


def test_errors_are_not_cached_as_misses(stub):
    stub.patients(lambda query: (500, b"", 0))
    directory = directory_for(stub.url)
    with pytest.raises(DirectoryUnavailable):
        directory.get("P-1")
    stub.patients(by_identifier({f"{MRN}|P-1": [resource()]}))
    assert directory.get("P-1").patient_id == "P-1"


def test_concurrent_lookups_of_one_patient_cost_one_request(stub):
    stub.patients(lambda query: (200, bundle(resource(), total=1), 0.3))
    directory = directory_for(stub.url)
    results = []
    threads = [threading.Thread(target=lambda: results.append(directory.get("P-1"))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8 and {p.patient_id for p in results} == {"P-1"}
    assert len(stub.requests) == 1
