"""Two Orthanc servers with the plugin on one real PostgreSQL (Orthanc's index through Debian's
orthanc-postgresql, "Lock": false; the plugin's registry, history and study claims in the same
database) and one storage folder: what one server knows, the other uses; no study is ever split."""

import json
import threading
import time
from functools import partial

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import AE

from neuronova.config import BUNDLED_SEED
from support.cluster import SERVER_NAMES, cluster_servers, start_together
from support.concurrency import at_once
from support.dicom_files import make_series, parse
from support.postgres import PostgresServer

HONG, KIM = "P-2024-001234", "P-2024-001235"  # both in the embedded registry's demo patients
PATIENT_TAGS = {HONG: {"PatientID": HONG, "PatientName": "Hong^Gildong", "PatientBirthDate": "19800115",
                       "PatientSex": "M"},
                KIM: {"PatientID": KIM, "PatientName": "Kim^Cheolsu", "PatientBirthDate": "19750520",
                      "PatientSex": "M"}}
with open(BUNDLED_SEED, encoding="utf-8") as seed:
    DEMO_PATIENTS = json.load(seed)
TRIALS = 30
HALF = 4  # instances of each half of a raced study
MR_STORAGE, EXPLICIT_LITTLE = "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1"


@pytest.fixture(scope="module")
def postgres():
    server = PostgresServer().start()
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def cluster(postgres, tmp_path_factory):
    servers = cluster_servers(postgres, str(tmp_path_factory.mktemp("cluster")))
    assert start_together(servers) == []
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture
def pair(cluster):
    """The two servers, emptied before the test (the index is shared: one clears both)."""
    cluster[0].clear()
    yield cluster
    assert all(server.alive() for server in cluster), "an Orthanc stopped answering during the test"


def _halves(folder, study: str, count: int = HALF) -> tuple[list[str], list[str]]:
    for name in ("a", "b"):
        (folder / name).mkdir(exist_ok=True)
    return (make_series(folder / "a", count, study_uid=study, **PATIENT_TAGS[HONG]),
            make_series(folder / "b", count, study_uid=study, **PATIENT_TAGS[KIM]))


def _find(server, level: str, study: str) -> list[str]:
    return server.post("/tools/find", json={"Level": level, "Query": {"StudyInstanceUID": study}}).json()


def _patients_of_study(server, study: str) -> set[str]:
    return {parse(server.get(f"/instances/{instance}/file").content).PatientID
            for instance in _find(server, "Instance", study)}


def _assert_one_patient(pair, study: str, stored: int) -> None:
    for server in pair:  # both servers see the one study, under one patient
        assert len(_find(server, "Study", study)) == 1
        assert len(_patients_of_study(server, study)) == 1
        assert len(_find(server, "Instance", study)) == stored


@pytest.mark.parametrize("trial", range(TRIALS))
def test_rest_halves_of_one_new_study_on_two_servers_end_under_one_patient(pair, tmp_path, trial):
    """POST /instances, half under each known patient, each half to another server at the same moment."""
    study = generate_uid()
    answers = []

    def send(server, files):
        for path in files:
            answers.append(server.post("/instances", data=open(path, "rb").read(),
                                       headers={"Content-Type": "application/dicom"}).status_code)

    at_once(*[partial(send, *arguments) for arguments in zip(pair, _halves(tmp_path, study))])
    assert answers == [200] * 2 * HALF
    _assert_one_patient(pair, study, 2 * HALF)


@pytest.mark.parametrize("trial", range(TRIALS))
def test_upload_route_halves_assigned_to_two_patients_on_two_servers_never_split(pair, tmp_path, trial):
    """The upload route, a person choosing each half's patient on another server: the second choice is 409."""
    study = generate_uid()
    answers = []

    def send(server, patient, files):
        for path in files:
            answers.append(server.post(f"/neuronova/upload/{patient}", data=open(path, "rb").read(),
                                       headers={"Content-Type": "application/dicom"}).status_code)

    at_once(*[partial(send, *arguments) for arguments in zip(pair, (HONG, KIM), _halves(tmp_path, study))])
    assert set(answers) <= {200, 409} and 200 in answers
    _assert_one_patient(pair, study, answers.count(200))


def _cstore(server, files: list[str], calling_aet: str = "CLUSTERSCU") -> list[int]:
    """One association, every file: the DIMSE status of each (None: the association failed)."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(MR_STORAGE, [EXPLICIT_LITTLE])
    association = ae.associate("127.0.0.1", server.dicom_port, ae_title=server.aet)
    if not association.is_established:
        return [None] * len(files)
    try:
        statuses = []
        for path in files:
            status = association.send_c_store(dcmread(path))
            statuses.append(status.Status if status else None)
        return statuses
    finally:
        association.release()


@pytest.mark.parametrize("trial", range(TRIALS))
def test_cstore_halves_of_one_new_study_on_two_servers_end_under_one_patient(pair, tmp_path, trial):
    study = generate_uid()
    statuses = [status for per_server in at_once(*[partial(_cstore, server, files)
                                                   for server, files in zip(pair, _halves(tmp_path, study))])
                for status in per_server]
    assert statuses == [0] * 2 * HALF
    _assert_one_patient(pair, study, 2 * HALF)


def test_a_patient_changed_on_one_server_is_used_by_the_other_at_once(pair, tmp_path):
    alpha, beta = pair
    answer = alpha.put("/neuronova/patients/P-CLUSTER-1", json={
        "name": "Yoon^Seoyeon", "birth_date": "1991-03-04", "gender": "female", "other_ids": [{"id": "MR7-0099"}]})
    assert answer.status_code in (200, 201)
    (path,) = make_series(tmp_path, 1, PatientID="MR7-0099", PatientName="YOON^S", PatientSex="")
    stored = beta.post("/instances", data=open(path, "rb").read()).json()
    dataset = parse(beta.get(f"/instances/{stored['ID']}/file").content)
    assert (dataset.PatientID, str(dataset.PatientName), dataset.PatientSex) == ("P-CLUSTER-1", "Yoon^Seoyeon", "F")
    assert beta.get("/neuronova/patients?search=yoon").json()["total"] == 1
    renamed = beta.put("/neuronova/patients/P-CLUSTER-1", json={
        "name": "Yoon^Seoyeon-Ji", "birth_date": "1991-03-04", "gender": "female", "other_ids": [{"id": "MR7-0099"}]})
    assert renamed.status_code == 200
    assert alpha.get("/neuronova/patients?search=P-CLUSTER-1").json()["patients"][0]["name"] == "Yoon^Seoyeon-Ji"


def test_a_study_deleted_on_one_server_is_released_on_the_other(pair, tmp_path):
    """beta has the study's claim cached (it just stored an instance of it); alpha deletes the study:
    the study sent again under the other patient on beta is that patient's, not the released one's."""
    alpha, beta = pair
    study = generate_uid()
    first, second = _halves(tmp_path, study, 2)
    assert alpha.post("/instances", data=open(first[0], "rb").read()).status_code == 200
    assert beta.post("/instances", data=open(first[1], "rb").read()).status_code == 200
    (study_id,) = _find(alpha, "Study", study)
    assert alpha.delete(f"/studies/{study_id}").status_code == 200
    time.sleep(0.5)  # the release's notification crosses PostgreSQL (well under the cache's recheck time)
    for path in second:
        assert beta.post("/instances", data=open(path, "rb").read()).status_code == 200
    assert _patients_of_study(alpha, study) == {KIM}


# What a scanner sends for Kim with its own local ID, unknown to the EMR: stored as it came (unmatched).
KIM_AT_THE_SCANNER = {"PatientID": "CT9-0777", "PatientName": "Kim^Cheolsu", "PatientBirthDate": "19750520",
                      "PatientSex": "M"}


def _post_all(server, files) -> list[int]:
    return [server.post("/instances", data=open(path, "rb").read()).status_code for path in files]


def test_a_study_moved_on_one_server_gets_its_later_instances_on_the_other(pair, tmp_path):
    """beta has the study's claim cached (it stored the first instances); alpha moves the study to Kim's
    EMR record: what beta stores next with the scanner's ID goes to Kim, and the study stays whole."""
    alpha, beta = pair
    study = generate_uid()
    for name in ("first", "later"):
        (tmp_path / name).mkdir()
    first = make_series(tmp_path / "first", 2, study_uid=study, **KIM_AT_THE_SCANNER)
    later = make_series(tmp_path / "later", 2, study_uid=study, **KIM_AT_THE_SCANNER)
    assert _post_all(beta, first) == [200, 200]
    (study_id,) = _find(alpha, "Study", study)
    moved = alpha.post(f"/neuronova/studies/{study_id}/patient/{KIM}")
    assert moved.status_code == 200, moved.text
    assert moved.json()["moved_instances"] == 2
    assert _post_all(beta, later) == [200, 200]
    _assert_one_patient(pair, study, 4)
    assert _patients_of_study(beta, study) == {KIM}
    rows = beta.get("/neuronova/history", params={"study": study, "limit": 100}).json()["entries"]
    later_uids = {str(parse(open(path, "rb").read()).SOPInstanceUID) for path in later}
    assert {row["action"] for row in rows if row["sop_instance_uid"] in later_uids} == {"moved"}


def test_two_moves_of_one_study_on_two_servers_at_once_one_waits_its_turn(pair, tmp_path):
    alpha, beta = pair
    study = generate_uid()
    assert _post_all(alpha, make_series(tmp_path, 3, study_uid=study, **KIM_AT_THE_SCANNER)) == [200] * 3
    (study_id,) = _find(alpha, "Study", study)
    answers = at_once(lambda: alpha.post(f"/neuronova/studies/{study_id}/patient/{KIM}"),
                      lambda: beta.post(f"/neuronova/studies/{study_id}/patient/{HONG}"))
    statuses = sorted(answer.status_code for answer in answers)
    refused = [answer for answer in answers if answer.status_code != 200]
    # the second either finds the study moved (404: its Orthanc ID changed) or the move running (409)
    assert statuses[0] == 200 and len(refused) == 1 and refused[0].status_code in (404, 409), \
        [answer.text for answer in answers]
    assert refused[0].json()["success"] is False
    _assert_one_patient(pair, study, 3)
    winner = next(answer for answer in answers if answer.status_code == 200).json()["patient_id"]
    assert _patients_of_study(alpha, study) == {winner}


def test_the_history_answers_for_the_cluster_and_names_each_server(pair, tmp_path):
    alpha, beta = pair
    study = generate_uid()
    first, second = _halves(tmp_path, study, 3)
    for server, files in ((alpha, first), (beta, second)):
        for path in files:
            assert server.post("/instances", data=open(path, "rb").read()).status_code == 200
    sops = {str(dcmread(path).SOPInstanceUID) for path in first + second}
    for server in pair:  # either server: every row of the study, each naming the server that ingested it
        entries = server.get(f"/neuronova/history?study={study}").json()["entries"]
        assert {entry["sop_instance_uid"] for entry in entries} == sops
        assert {entry["server"] for entry in entries} == set(SERVER_NAMES)
        assert [entry["server"] for entry in server.get(f"/neuronova/history?study={study}&server=beta")
                .json()["entries"]] == ["beta"] * 3
        listed = server.get("/neuronova/studies").json()
        assert listed.get("success"), listed
        assert [row for row in listed["studies"] if row["study_instance_uid"] == study], listed


def test_two_servers_starting_together_on_an_empty_database_both_start(postgres, tmp_path):
    """10 trials: a new database each time, both servers started at the same moment (Orthanc's own
    schema, then the plugin's, created and seeded under PostgreSQL's advisory lock)."""
    for trial in range(10):
        database = postgres.create_database(f"empty{trial}")
        servers = cluster_servers(postgres, str(tmp_path / f"trial{trial}"), database)
        try:
            assert start_together(servers) == [], f"trial {trial}"
            for server in servers:  # the demo patients, each once
                assert server.get("/neuronova/patients?search=&limit=500").json()["total"] == len(DEMO_PATIENTS)
            assert postgres.sql("SELECT count(*) FROM neuronova.registry_meta", database) == "1\n"
        finally:
            for server in servers:
                server.stop()


@pytest.mark.parametrize("outage_seconds", [5, 30])
def test_postgresql_killed_during_a_cstore_series_loses_nothing(postgres, tmp_path, outage_seconds):
    """PostgreSQL crashes (immediate stop) for 5 s and for 30 s while a modality sends a series,
    alternately to each server, sending again what was refused: every instance acknowledged is
    stored, reconciled to the EMR's patient and in the history once; refusals are retryable (0xA700)."""
    servers = cluster_servers(postgres, str(tmp_path / "cluster"), postgres.create_database(f"outage{outage_seconds}"))
    assert start_together(servers) == []
    try:
        files = make_series(tmp_path, 40, PatientID=HONG, PatientName="HONG^GD", PatientBirthDate="", PatientSex="")
        refusals, acknowledged = [], []

        def outage():
            time.sleep(1.0)
            postgres.stop("immediate")
            time.sleep(outage_seconds)
            postgres.start()

        down = threading.Thread(target=outage)
        down.start()
        deadline = time.monotonic() + outage_seconds + 180
        for index, path in enumerate(files):
            while time.monotonic() < deadline:
                (status,) = _cstore(servers[index % 2], [path])
                if status == 0:
                    acknowledged.append(path)
                    break
                refusals.append(status)
                time.sleep(0.5)
        down.join()
        assert len(acknowledged) == len(files)
        assert refusals, "PostgreSQL was down while the series was sent: some instance must have been refused"
        assert set(refusals) <= {0xA700, None}  # Out of Resources (the modality retries), or no association
        alpha = servers[0]
        study = str(dcmread(files[0]).StudyInstanceUID)
        assert len(_find(alpha, "Instance", study)) == len(files)
        assert _patients_of_study(alpha, study) == {HONG}
        for instance in _find(alpha, "Instance", study):
            assert str(parse(alpha.get(f"/instances/{instance}/file").content).PatientName) == "Hong^Gildong"
        entries = alpha.get(f"/neuronova/history?study={study}&limit=1000").json()["entries"]
        stored_rows = [entry for entry in entries if entry["action"] != "rejected"]
        assert sorted(entry["sop_instance_uid"] for entry in stored_rows) == sorted(
            str(dcmread(path).SOPInstanceUID) for path in files)
        assert {entry["action"] for entry in stored_rows} == {"coerced"}
        refused_by_plugin = [entry for entry in entries if entry["action"] == "rejected"]
        assert all("retry" in entry["error"] for entry in refused_by_plugin)
        print(f"PostgreSQL down {outage_seconds} s: {len(files)} acknowledged, {len(refusals)} refusals "
              f"({len(refused_by_plugin)} by the plugin's claims, the rest by Orthanc's index)")
    finally:
        for server in servers:
            server.stop()
