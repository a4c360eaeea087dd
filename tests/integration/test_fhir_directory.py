"""The FHIR R4 directory backend inside a real Orthanc, against a real FHIR R4 engine (Medplum's
FhirRouter and in-memory repository, tests/support/fhir_server) on loopback.

The engine requires a bearer token, which reaches the plugin through Orthanc's `${VAR}` substitution
of environment variables in its configuration file; it answers at most 3 patients a page, so searches
follow Bundle `next` links.
"""

from __future__ import annotations

import os
from io import BytesIO

import pytest
from pydicom import dcmwrite

from support.dicom_files import make_series, parse, read_bytes
from support.dicom_net import storescu
from support.fhir import FhirServer, mrn
from support.servers import OrthancServer

MRN = "urn:oid:1.2.410.200.1.1"  # the hospital's canonical MRN
CT1 = "urn:neuronova:ct1-local"  # a scanner's local IDs
OTHER = "urn:oid:1.2.410.999"  # a partner hospital's MRN
TOKEN_VARIABLE = "NEURONOVA_TEST_FHIR_TOKEN"
TOKEN = "test-token-4b1d"
DICOM = {"Content-Type": "application/dicom"}
PREDECESSOR_KEYS = ("patient_id", "name", "birth_date", "gender")


def patients() -> list[dict]:
    """The EMR's patients; the merged-away record is added once its survivor has an id."""
    return [
        {"resourceType": "Patient",
         "identifier": [mrn(MRN, "P-FH-0001"), {"system": CT1, "value": "CT1-4471"}, {"system": OTHER, "value": "X-99"}],
         "name": [{"use": "nickname", "given": ["Gil"]}, {"use": "official", "family": "Hong", "given": ["Gildong"]}],
         "gender": "male", "birthDate": "1980-01-15"},
        {"resourceType": "Patient", "identifier": [mrn(MRN, "P-FH-0002"), mrn(MRN, "P-FH-0009", use="old")],
         "name": [{"use": "official", "family": "Kim", "given": ["Cheolsu", "Minho"]}],
         "gender": "male", "birthDate": "1975-05-20"},
        {"resourceType": "Patient", "identifier": [mrn(MRN, "P-FH-0003")],
         "name": [{"use": "official", "family": "홍", "given": ["길순"]}], "gender": "female", "birthDate": "1990-03-07"},
        {"resourceType": "Patient", "identifier": [mrn(MRN, "P-FH-0004")],
         "name": [{"family": "Lee", "given": ["Younghee"]}], "gender": "female", "birthDate": "1948-03"},
        *[{"resourceType": "Patient", "identifier": [mrn(MRN, f"P-FH-01{i:02d}")],
           "name": [{"family": "Hongsen", "given": [f"Test{i}"]}], "gender": "other"} for i in range(5)],
    ]


def load(engine: FhirServer) -> dict[str, dict]:
    stored = {}
    for resource in patients():
        created = engine.create(resource)
        stored[created["identifier"][0]["value"]] = created
    # P-FH-0009 was merged into P-FH-0002: the old record stays, replaced-by its survivor.
    stored["P-FH-0009"] = engine.create({
        "resourceType": "Patient", "active": False, "identifier": [mrn(MRN, "P-FH-0009")],
        "name": [{"family": "Kim", "given": ["Chulsoo"]}], "gender": "male", "birthDate": "1975-05-02",
        "link": [{"type": "replaced-by", "other": {"reference": f"Patient/{stored['P-FH-0002']['id']}"}}]})
    return stored


def fhir_overrides(engine: FhirServer, **fhir) -> dict:
    settings = {"BaseUrl": engine.base_url, "MrnSystem": MRN,
                "Auth": {"Type": "bearer", "Token": "${%s}" % TOKEN_VARIABLE},
                "IssuerSystems": {"CT1_LOCAL": CT1}, "ConnectTimeoutSeconds": 2, "ReadTimeoutSeconds": 5,
                "RetryAfterSeconds": 1}
    settings.update(fhir)
    return {"NeuroNova": {"Directory": {"Backend": "fhir", "Fhir": settings}}}


def start_orthanc(data_dir: str, overrides: dict) -> OrthancServer:
    """Orthanc with the token in its environment only: the configuration file says ${VAR}."""
    previous = os.environ.get(TOKEN_VARIABLE)
    os.environ[TOKEN_VARIABLE] = TOKEN
    try:
        return OrthancServer(data_dir, overrides=overrides).start()
    finally:
        if previous is None:
            del os.environ[TOKEN_VARIABLE]
        else:
            os.environ[TOKEN_VARIABLE] = previous


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    server = FhirServer(str(tmp_path_factory.mktemp("fhir")), page_max=3, token=TOKEN).start()
    try:
        server.records = load(server)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def orthanc_fhir(engine, tmp_path_factory):
    server = start_orthanc(str(tmp_path_factory.mktemp("orthanc-fhir")), fhir_overrides(engine))
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc_fhir):
    orthanc_fhir.clear()
    yield orthanc_fhir
    assert orthanc_fhir.alive(), "Orthanc stopped answering during the test"


def to_bytes(dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def stored_file(pacs, instance_id):
    return parse(pacs.get(f"/instances/{instance_id}/file").content)


def stored_by_uid(pacs, dicom_path: str):
    sop_instance_uid = parse(open(dicom_path, "rb").read()).SOPInstanceUID
    found = pacs.post("/tools/lookup", data=sop_instance_uid).json()
    assert len(found) == 1, f"{sop_instance_uid} stored {len(found)} times"
    return parse(pacs.get(f"{found[0]['Path']}/file").content)


def history(pacs, **filters) -> list[dict]:
    answer = pacs.get("/neuronova/history", params=filters)
    assert answer.status_code == 200, answer.text
    return answer.json()["entries"]


def predecessor_view(patient: dict) -> dict:
    return {key: patient[key] for key in PREDECESSOR_KEYS}


def test_the_token_came_from_the_environment_through_orthancs_substitution(pacs):
    config_text = open(os.path.join(pacs.data_dir, "orthanc.json"), encoding="utf-8").read()
    assert "${%s}" % TOKEN_VARIABLE in config_text and TOKEN not in config_text
    assert pacs.get("/neuronova/patients", params={"search": "Gildong"}).status_code == 200


def test_search_answers_in_the_predecessors_shape(pacs):
    answer = pacs.get("/neuronova/patients", params={"search": "Gildong", "limit": 50})
    assert answer.status_code == 200
    body = answer.json()
    assert body["success"] is True and body["total"] == 1
    assert [predecessor_view(p) for p in body["patients"]] == [
        {"patient_id": "P-FH-0001", "name": "Hong^Gildong", "birth_date": "1980-01-15", "gender": "male"}]
    assert body["patients"][0]["other_ids"] == [{"id": "CT1-4471", "issuer": "CT1_LOCAL"},
                                               {"id": "X-99", "issuer": OTHER}]


def test_search_follows_pages_limits_and_leaves_merged_records_out(pacs):
    hong = pacs.get("/neuronova/patients", params={"search": "hong"}).json()
    ids = [p["patient_id"] for p in hong["patients"]]
    # Medplum matches name parts by substring: Hong and the five Hongsen, over three pages of three.
    assert sorted(ids) == ["P-FH-0001"] + [f"P-FH-01{i:02d}" for i in range(5)]
    assert hong["total"] == 6
    limited = pacs.get("/neuronova/patients", params={"search": "hong", "limit": 2}).json()
    assert len(limited["patients"]) == 2 and limited["total"] == 6
    kim = pacs.get("/neuronova/patients", params={"search": "kim"}).json()
    assert [p["patient_id"] for p in kim["patients"]] == ["P-FH-0002"] and kim["total"] == 1
    everyone = pacs.get("/neuronova/patients").json()
    assert everyone["total"] == 9 and len(everyone["patients"]) == 9


def test_search_by_identifier_and_by_hangul_name(pacs):
    by_local = pacs.get("/neuronova/patients", params={"search": "CT1-4471"}).json()
    assert [p["patient_id"] for p in by_local["patients"]] == ["P-FH-0001"]
    by_old_mrn = pacs.get("/neuronova/patients", params={"search": "P-FH-0009"}).json()
    assert [p["patient_id"] for p in by_old_mrn["patients"]] == ["P-FH-0002"]
    hangul = pacs.get("/neuronova/patients?search=%EA%B8%B8%EC%88%9C").json()  # 길순
    assert [predecessor_view(p) for p in hangul["patients"]] == [
        {"patient_id": "P-FH-0003", "name": "홍^길순", "birth_date": "1990-03-07", "gender": "female"}]


def test_one_patient_partial_birth_date_merged_and_unknown(pacs):
    answer = pacs.get("/neuronova/patients/P-FH-0004")
    assert answer.status_code == 200
    assert predecessor_view(answer.json()["patient"]) == {
        "patient_id": "P-FH-0004", "name": "Lee^Younghee", "birth_date": "1948-03", "gender": "female"}
    merged = pacs.get("/neuronova/patients/P-FH-0009").json()["patient"]
    assert (merged["patient_id"], merged["name"]) == ("P-FH-0002", "Kim^Cheolsu^Minho")
    missing = pacs.get("/neuronova/patients/NOBODY-1")
    assert missing.status_code == 404 and missing.json()["success"] is False


def test_put_answers_405_read_only(pacs):
    answer = pacs.put("/neuronova/patients/P-FH-0001", json={"name": "Hong^Gildong", "gender": "male"})
    assert answer.status_code == 405
    assert answer.headers["Allow"] == "GET"
    assert pacs.get("/neuronova/patients/P-FH-0001").json()["patient"]["name"] == "Hong^Gildong"


def test_upload_assigns_the_emr_patient(pacs):
    original = parse(read_bytes("CT_small.dcm"))
    answer = pacs.post("/neuronova/upload/P-FH-0001", data=read_bytes("CT_small.dcm"), headers=DICOM)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True and body["patient_id"] == "P-FH-0001"
    stored = stored_file(pacs, body["orthanc_response"]["ID"])
    assert (stored.PatientID, str(stored.PatientName), stored.PatientBirthDate, stored.PatientSex) == \
        ("P-FH-0001", "Hong^Gildong", "19800115", "M")
    assert stored.OtherPatientIDsSequence[-1].PatientID == original.PatientID


def test_upload_with_hangul_name_and_partial_birth_date(pacs):
    hangul = pacs.post("/neuronova/upload/P-FH-0003", data=read_bytes("MR_small.dcm"), headers=DICOM)
    assert hangul.status_code == 200, hangul.text
    stored = stored_file(pacs, hangul.json()["orthanc_response"]["ID"])
    assert (str(stored.PatientName), stored.PatientBirthDate, stored.PatientSex) == ("홍^길순", "19900307", "F")
    assert stored.SpecificCharacterSet == "ISO_IR 192"

    dataset = parse(read_bytes("CT_small.dcm"))
    dataset.PatientBirthDate = "19480307"  # what the scanner was told
    partial = pacs.post("/neuronova/upload/P-FH-0004", data=to_bytes(dataset), headers=DICOM)
    assert partial.status_code == 200, partial.text
    stored = stored_file(pacs, partial.json()["orthanc_response"]["ID"])
    # DICOM DA has no partial dates: the EMR's "born in March 1948" is written as an unknown
    # birth date, and the scanner's value is kept in the audit item.
    assert (stored.PatientID, str(stored.PatientName), stored.PatientBirthDate) == ("P-FH-0004", "Lee^Younghee", "")
    assert stored.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientBirthDate == "19480307"


def test_upload_to_a_merged_away_id_assigns_the_surviving_patient(pacs):
    answer = pacs.post("/neuronova/upload/P-FH-0009", data=read_bytes("CT_small.dcm"), headers=DICOM)
    assert answer.status_code == 200, answer.text
    assert answer.json()["patient_id"] == "P-FH-0002"
    stored = stored_file(pacs, answer.json()["orthanc_response"]["ID"])
    assert (stored.PatientID, str(stored.PatientName), stored.PatientBirthDate) == \
        ("P-FH-0002", "Kim^Cheolsu^Minho", "19750520")


def test_upload_to_an_unknown_patient_is_a_404_and_stores_nothing(pacs):
    answer = pacs.post("/neuronova/upload/NOBODY-2", data=read_bytes("CT_small.dcm"), headers=DICOM)
    assert answer.status_code == 404 and answer.json()["success"] is False
    assert pacs.instances() == []


def test_cstore_by_another_identifier_is_reconciled_to_the_canonical_patient(pacs, engine, tmp_path):
    before = engine.requests_served()
    files = make_series(tmp_path, 20, PatientID="CT1-4471", IssuerOfPatientID="CT1_LOCAL", PatientName="HONG^GD",
                        PatientBirthDate="", PatientSex="")
    sent = storescu(pacs.dicom_port, files, calling_aet="CT1")
    assert sent.returncode == 0, sent.stderr
    # One series, one look-up: the MRN search, then the search in the CT1_LOCAL issuer's system.
    assert engine.requests_served() - before == 2
    for path in (files[0], files[-1]):
        dataset = stored_by_uid(pacs, path)
        assert (dataset.PatientID, str(dataset.PatientName), dataset.PatientBirthDate, dataset.PatientSex) == \
            ("P-FH-0001", "Hong^Gildong", "19800115", "M")
        assert dataset.OriginalAttributesSequence[-1].ReasonForTheAttributeModification == "COERCE"
        other = dataset.OtherPatientIDsSequence[-1]
        assert (other.PatientID, other.IssuerOfPatientID) == ("CT1-4471", "CT1_LOCAL")
    study = parse(open(files[0], "rb").read()).StudyInstanceUID
    entries = history(pacs, study=study, limit=100)
    assert len(entries) == 20 and {(e["action"], e["patient_after"]) for e in entries} == {("coerced", "P-FH-0001")}

    # Another hospital's ID without an issuer, and the MRN of a merged-away record.
    (partner,) = make_series(tmp_path, 1, PatientID="X-99", PatientName="Hong^G")
    (merged,) = make_series(tmp_path, 1, PatientID="P-FH-0009", PatientName="Kim^Chulsoo", PatientBirthDate="19750502")
    assert storescu(pacs.dicom_port, [partner, merged], calling_aet="MR7").returncode == 0
    assert stored_by_uid(pacs, partner).PatientID == "P-FH-0001"
    dataset = stored_by_uid(pacs, merged)
    assert (dataset.PatientID, str(dataset.PatientName), dataset.PatientBirthDate) == \
        ("P-FH-0002", "Kim^Cheolsu^Minho", "19750520")


def test_with_the_engine_stopped_the_routes_answer_503_and_orthanc_goes_on(tmp_path):
    engine = FhirServer(str(tmp_path), token=TOKEN).start()
    orthanc = None
    try:
        load(engine)
        orthanc = start_orthanc(str(tmp_path / "orthanc"), fhir_overrides(engine))
        assert orthanc.get("/neuronova/patients", params={"search": "hong"}).json()["total"] == 6
        engine.stop()

        search = orthanc.get("/neuronova/patients", params={"search": "hong"})
        assert search.status_code == 503
        assert search.json()["success"] is False
        error = search.json()["error"]
        assert engine.base_url in error and "connection refused" in error

        upload = orthanc.post("/neuronova/upload/P-FH-0004", data=read_bytes("CT_small.dcm"), headers=DICOM)
        assert upload.status_code == 503 and "FHIR server" in upload.json()["error"]
        assert orthanc.instances() == []

        # C-STORE: nothing is lost, the instances are stored as sent and recorded as unverified.
        files = make_series(tmp_path, 3, PatientID="CT1-4471", IssuerOfPatientID="CT1_LOCAL", PatientName="HONG^GD")
        sent = storescu(orthanc.dicom_port, files, calling_aet="CT1")
        assert sent.returncode == 0, sent.stderr
        assert {stored_by_uid(orthanc, path).PatientID for path in files} == {"CT1-4471"}
        entries = history(orthanc, patient="CT1-4471")
        assert len(entries) == 3 and {e["action"] for e in entries} == {"unverified"}
        assert all("FHIR server" in e["error"] and "connection refused" in e["error"] for e in entries), entries

        assert orthanc.get("/system").status_code == 200
        plain = orthanc.post("/instances", data=read_bytes("MR_small.dcm"))
        assert plain.status_code == 200 and orthanc.alive()
    finally:
        if orthanc:
            orthanc.stop()
        engine.stop()


def test_a_wrong_token_is_a_503_naming_the_refusal(tmp_path):
    engine = FhirServer(str(tmp_path), token="another-token").start()
    orthanc = None
    try:
        orthanc = start_orthanc(str(tmp_path / "orthanc"), fhir_overrides(engine))
        answer = orthanc.get("/neuronova/patients/P-FH-0001")
        assert answer.status_code == 503
        assert "HTTP 401" in answer.json()["error"] and "NeuroNova.Directory.Fhir.Auth" in answer.json()["error"]
    finally:
        if orthanc:
            orthanc.stop()
        engine.stop()


def test_fhir_backend_without_base_url_stops_the_plugin_naming_the_key(tmp_path):
    overrides = {"NeuroNova": {"Directory": {"Backend": "fhir", "Fhir": {"MrnSystem": MRN}}}}
    server = OrthancServer(str(tmp_path), overrides=overrides)
    try:
        with pytest.raises(RuntimeError):
            server.start(timeout=20)
        assert "NeuroNova.Directory.Fhir.BaseUrl: required" in server.log_text()
    finally:
        server.stop()


def test_emr_unreachable_mid_series_loses_nothing(tmp_path):
    engine = FhirServer(str(tmp_path), token=TOKEN).start()
    orthanc = None
    try:
        load(engine)
        orthanc = start_orthanc(str(tmp_path / "orthanc"), fhir_overrides(engine))
        first = make_series(tmp_path, 5, PatientID="CT1-4471", IssuerOfPatientID="CT1_LOCAL", PatientName="HONG^GD")
        study_uid = parse(open(first[0], "rb").read()).StudyInstanceUID
        assert storescu(orthanc.dicom_port, first, calling_aet="CT1").returncode == 0
        engine.stop()  # the EMR goes away mid-study
        # The same series goes on, and the scanner also sends an image of the study under the old
        # partner ID (a new lookup the EMR cannot answer), and a new study arrives.
        rest = make_series(tmp_path, 5, study_uid=study_uid, PatientID="CT1-4471", IssuerOfPatientID="CT1_LOCAL",
                           PatientName="HONG^GD")
        (other_id,) = make_series(tmp_path, 1, study_uid=study_uid, PatientID="X-99", PatientName="Hong^G")
        new_study = make_series(tmp_path, 2, PatientID="CT1-5000", IssuerOfPatientID="CT1_LOCAL")
        sent = storescu(orthanc.dicom_port, rest + [other_id] + new_study, calling_aet="CT1")
        assert sent.returncode == 0, sent.stderr

        assert len(orthanc.instances()) == 5 + 5 + 1 + 2
        for path in first + rest + [other_id]:
            assert stored_by_uid(orthanc, path).PatientID == "P-FH-0001"  # the study stays with its patient
        assert len(orthanc.get("/studies").json()) == 2
        actions = {e["sop_instance_uid"]: e["action"] for e in history(orthanc, study=study_uid, limit=100)}
        assert actions[parse(open(other_id, "rb").read()).SOPInstanceUID] == "unverified"
        assert set(actions.values()) <= {"coerced", "unverified"} and len(actions) == 11
        for path in new_study:  # nothing to follow: stored as sent, recorded unverified
            assert stored_by_uid(orthanc, path).PatientID == "CT1-5000"
        assert {e["action"] for e in history(orthanc, patient="CT1-5000")} == {"unverified"}
    finally:
        if orthanc:
            orthanc.stop()
        engine.stop()
