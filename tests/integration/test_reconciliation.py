"""Automatic patient reconciliation inside a real Orthanc, with real DICOM clients (storescu, pynetdicom)."""

import re
import time

import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import MRImageStorage

from support.dicom_files import make_series, parse
from support.dicom_net import storescu
from neuronova.metrics import PUBLISH_SECONDS
from support.servers import OrthancServer, wait_until

HONG_LOCAL = {"PatientID": "CT1-0042", "IssuerOfPatientID": "SCANNER-CT1", "PatientName": "HONG^GD",
              "PatientBirthDate": "", "PatientSex": ""}


@pytest.fixture
def hong_with_local_id(pacs):
    answer = pacs.put("/neuronova/patients/P-2024-001234", json={
        "name": "Hong^Gildong", "birth_date": "1980-01-15", "gender": "male",
        "other_ids": [{"id": "CT1-0042", "issuer": "SCANNER-CT1"}, {"id": "MRN-OLD-7"}]})
    assert answer.status_code in (200, 201)
    return pacs


def metric(pacs, name: str) -> float:
    """A plugin counter; the plugin publishes them from the first instance it handles on."""
    text = pacs.get("/tools/metrics-prometheus").text
    match = re.search(rf"^{name} ([0-9.e+]+)", text, re.MULTILINE)
    assert match, f"{name} missing from /tools/metrics-prometheus"
    return float(match.group(1))


def settled(pacs, name: str) -> float:
    """A counter once the plugin's publishing rounds (every half second) have caught up; 0 when none
    was published yet (no instance so far)."""
    def value():
        found = re.search(rf"^{name} ([0-9.e+]+)", pacs.get("/tools/metrics-prometheus").text, re.MULTILINE)
        return float(found.group(1)) if found else 0.0
    previous = value()
    for _ in range(20):
        time.sleep(PUBLISH_SECONDS + 0.2)
        current = value()
        if current == previous:
            return current
        previous = current
    return previous


def metric_reaches(pacs, name: str, expected: float) -> float:
    """The plugin publishes its counters within half a second of a change (one publishing thread)."""
    try:
        wait_until(lambda: metric(pacs, name) == expected, 5, f"{name} == {expected}", interval=0.1)
    except TimeoutError:
        pass
    return metric(pacs, name)


def stored(pacs, sop_instance_uid):
    found = pacs.post("/tools/lookup", data=sop_instance_uid).json()
    assert len(found) == 1, f"{sop_instance_uid} stored {len(found)} times"
    return parse(pacs.get(f"{found[0]['Path']}/file").content)


def history(pacs, **filters):
    answer = pacs.get("/neuronova/history", params=filters)
    assert answer.status_code == 200, answer.text
    return answer.json()["entries"]


def test_series_with_a_scanner_local_id_is_stored_under_the_canonical_patient(hong_with_local_id, tmp_path):
    pacs = hong_with_local_id
    pacs.post("/instances", data=open(make_series(tmp_path, 1, PatientID="WARM-UP")[0], "rb").read())
    lookups_before = metric(pacs, "neuronova_emr_lookups")
    files = make_series(tmp_path, 200, **HONG_LOCAL)
    sent = storescu(pacs.dicom_port, files, calling_aet="CT1")
    assert sent.returncode == 0, sent.stderr
    assert len(pacs.get("/patients").json()) == 2 and len(pacs.instances()) == 201
    for path in files[:3] + files[-2:]:
        dataset = stored(pacs, parse(open(path, "rb").read()).SOPInstanceUID)
        assert (dataset.PatientID, str(dataset.PatientName), dataset.PatientBirthDate, dataset.PatientSex) == \
            ("P-2024-001234", "Hong^Gildong", "19800115", "M")
        item = dataset.OriginalAttributesSequence[-1]
        assert item.ReasonForTheAttributeModification == "COERCE"
        assert item.ModifiedAttributesSequence[0].PatientID == "CT1-0042"
        assert dataset.OtherPatientIDsSequence[-1].PatientID == "CT1-0042"
        assert dataset.OtherPatientIDsSequence[-1].IssuerOfPatientID == "SCANNER-CT1"
        assert "IssuerOfPatientID" not in dataset
    entries = history(pacs, action="coerced", limit=1000)
    assert len(entries) == 200
    assert {(e["path"], e["remote"], e["patient_before"], e["patient_after"]) for e in entries} == \
        {("dicom", "CT1", "CT1-0042", "P-2024-001234")}
    lookups = metric(pacs, "neuronova_emr_lookups") - lookups_before
    print(f"\nEMR lookups for a 200-instance series: {lookups:.0f}")
    assert lookups == 1


def test_known_id_with_misspelt_name_is_corrected_over_rest(pacs, tmp_path):
    (path,) = make_series(tmp_path, 1, PatientID="P-2024-001235", PatientName="Kim^Cheolsoo",
                          PatientBirthDate="19750520", PatientSex="M")
    answer = pacs.post("/instances", data=open(path, "rb").read())
    assert answer.status_code == 200 and answer.json()["Status"] == "Success", answer.text
    dataset = stored(pacs, parse(open(path, "rb").read()).SOPInstanceUID)
    assert str(dataset.PatientName) == "Kim^Cheolsu" and dataset.PatientID == "P-2024-001235"
    assert str(dataset.OriginalAttributesSequence[-1].ModifiedAttributesSequence[0].PatientName) == "Kim^Cheolsoo"
    assert "OtherPatientIDsSequence" not in dataset or all(
        o.PatientID != "P-2024-001235" for o in dataset.OtherPatientIDsSequence)
    (entry,) = history(pacs, patient="P-2024-001235", action="coerced")
    assert entry["path"] == "rest"


def test_matching_instance_is_unchanged_and_unknown_patient_accepted_by_default(pacs, tmp_path):
    (known,) = make_series(tmp_path, 1, PatientID="P-2024-001235", PatientName="Kim^Cheolsu",
                           PatientBirthDate="19750520", PatientSex="M")
    (unknown,) = make_series(tmp_path, 1, PatientID="LOCAL-999", PatientName="Nobody^Known")
    assert storescu(pacs.dicom_port, [known, unknown]).returncode == 0
    assert stored(pacs, parse(open(unknown, "rb").read()).SOPInstanceUID).PatientID == "LOCAL-999"
    assert "OriginalAttributesSequence" not in stored(pacs, parse(open(known, "rb").read()).SOPInstanceUID)
    assert history(pacs, patient="LOCAL-999")[0]["action"] == "unmatched"
    assert history(pacs, patient="P-2024-001235")[0]["action"] == "unchanged"


def test_a_study_is_never_split_across_patients(hong_with_local_id, tmp_path):
    pacs = hong_with_local_id
    study = generate_uid()
    first = make_series(tmp_path, 2, study_uid=study, **HONG_LOCAL)
    second = make_series(tmp_path, 1, study_uid=study, PatientID="P-2024-001235", PatientName="Kim^Cheolsu")
    assert storescu(pacs.dicom_port, first).returncode == 0
    assert storescu(pacs.dicom_port, second).returncode == 0
    assert len(pacs.get("/studies").json()) == 1 and len(pacs.get("/patients").json()) == 1
    moved = stored(pacs, parse(open(second[0], "rb").read()).SOPInstanceUID)
    assert moved.PatientID == "P-2024-001234" and str(moved.PatientName) == "Hong^Gildong"
    (conflict,) = history(pacs, study=study, action="conflict")
    assert conflict["patient_before"] == "P-2024-001235" and conflict["patient_after"] == "P-2024-001234"
    assert "already stored under patient P-2024-001234" in conflict["error"] or conflict["error"] == ""


def test_history_filters_and_limit(pacs, tmp_path):
    files = make_series(tmp_path, 3, PatientID="P-2024-001236", PatientName="Lee^Younghee",
                        PatientBirthDate="19881103", PatientSex="F")
    assert storescu(pacs.dicom_port, files).returncode == 0
    study = parse(open(files[0], "rb").read()).StudyInstanceUID
    newest_first = history(pacs, study=study)
    assert len(newest_first) == 3 and newest_first[0]["time"] >= newest_first[-1]["time"]
    assert len(history(pacs, study=study, limit=2)) == 2
    assert history(pacs, study=study, since="2999-01-01") == []
    assert len(history(pacs, study=study, since="2000-01-01T00:00:00")) == 3
    entry = newest_first[0]
    assert entry["syntax_before"] == "1.2.840.10008.1.2.1" and entry["syntax_after"] == "1.2.840.10008.1.2.4.201"
    assert entry["bytes_after"] < entry["bytes_before"] and entry["duration_ms"] > 0
    for bad in ({"action": "lost"}, {"since": "yesterday"}, {"limit": "0"}):
        answer = pacs.get("/neuronova/history", params=bad)
        assert answer.status_code == 400 and answer.json()["success"] is False


def test_metrics_appear_in_orthancs_prometheus_endpoint(pacs, tmp_path):
    before = settled(pacs, "neuronova_transcoded")  # the previous test's instances published first
    assert storescu(pacs.dicom_port, make_series(tmp_path, 2, PatientID="LOCAL-1")).returncode == 0
    assert metric_reaches(pacs, "neuronova_transcoded", before + 2) == before + 2
    for name in ("neuronova_instances_unmatched", "neuronova_instances_coerced", "neuronova_bytes_saved",
                 "neuronova_stored_bytes", "neuronova_received_bytes", "neuronova_emr_lookup_errors", "neuronova_transcode_failures"):
        metric(pacs, name)
    assert metric(pacs, "neuronova_bytes_saved") > 0


@pytest.fixture(scope="module")
def strict_pacs(tmp_path_factory):
    server = OrthancServer(str(tmp_path_factory.mktemp("strict")), {"NeuroNova": {"Reconciliation": {
        "UnknownPatient": "reject", "StudyConflict": "reject"}}}).start()
    yield server
    server.stop()


def test_reject_policy_fails_the_cstore_and_stores_nothing(strict_pacs, tmp_path):
    files = make_series(tmp_path, 2, PatientID="LOCAL-404", PatientName="Nobody^Known")
    sent = storescu(strict_pacs.dicom_port, files, calling_aet="CT1", extra=("-v",))
    assert sent.returncode != 0
    # 0xC000: storescu names it, then stops sending (as a modality would, to retry later).
    assert "Received Store Response (Error: CannotUnderstand)" in sent.stderr, sent.stderr
    assert strict_pacs.instances() == []
    entries = history(strict_pacs, patient="LOCAL-404", action="rejected")
    assert len(entries) == 1 and "not known to the EMR" in entries[0]["error"]


def test_reject_policy_answers_pynetdicom_with_a_failure_status(strict_pacs, tmp_path):
    (path,) = make_series(tmp_path, 1, PatientID="LOCAL-405")
    ae = AE(ae_title="MR7")
    ae.add_requested_context(MRImageStorage, ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", strict_pacs.dicom_port, ae_title=strict_pacs.aet)
    assert assoc.is_established
    status = assoc.send_c_store(parse(open(path, "rb").read()))
    assoc.release()
    assert status.Status == 0xC000
    assert strict_pacs.instances() == []


def test_reject_policy_answers_the_upload_route_with_409_and_core_rest_with_filtered_out(strict_pacs, tmp_path):
    (path,) = make_series(tmp_path, 1, PatientID="LOCAL-406")
    answer = strict_pacs.post("/neuronova/upload", data=open(path, "rb").read())
    assert answer.status_code == 409
    assert answer.json()["success"] is False and "LOCAL-406" in answer.json()["error"]
    # Orthanc's own POST /instances says a plugin filtered the instance out (its only way in 1.10).
    core = strict_pacs.post("/instances", data=open(path, "rb").read())
    assert core.status_code == 200 and core.json()["Status"] == "FilteredOut"
    assert strict_pacs.instances() == []
    assert len(history(strict_pacs, patient="LOCAL-406", action="rejected")) == 2


def test_reject_policy_refuses_a_study_split(strict_pacs, tmp_path):
    study = generate_uid()
    kim = make_series(tmp_path, 1, study_uid=study, PatientID="P-2024-001235", PatientName="Kim^Cheolsu")
    lee = make_series(tmp_path, 1, study_uid=study, PatientID="P-2024-001236", PatientName="Lee^Younghee")
    assert storescu(strict_pacs.dicom_port, kim, calling_aet="CT1").returncode == 0
    assert storescu(strict_pacs.dicom_port, lee, calling_aet="CT1").returncode != 0
    assert history(strict_pacs, study=study, action="rejected")[0]["patient_before"] == "P-2024-001236"
