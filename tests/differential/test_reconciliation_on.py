"""Differential with the plugin's patient reconciliation ON (the default configuration: unknown patients
accepted, a study follows the patient it is stored under), files whose patient IDs the EMR directory does not
know (its demo patients are P-2024-...). Patient-level modification with KeepSource false and anonymized copies
that keep the StudyInstanceUID must give the same result as a plain Orthanc: the plugin must keep the instances
and must not take the anonymized copy back to the source's patient. Both servers run without GDCM (see
support/differential.py)."""

import json

import pytest

from support.differential import (Masker, assert_same, check_statistics, drop, file_bytes, instances_snapshot,
                                  known_uids, make_pair, uids_of)
from support.servers import wait_until

FILES = ["CT_small.dcm", "MR_small.dcm", "rtplan.dcm"]
KNOWN = known_uids()
SOURCE_IDS: set = set()


@pytest.fixture(scope="module")
def reconciled(tmp_path_factory):
    pair = make_pair(tmp_path_factory, "reconciliation-on", plugin_overrides={
        "NeuroNova": {"Reconciliation": {"Enabled": True}}})
    try:
        config = pair.plugin.config["NeuroNova"]["Reconciliation"]
        assert config["Enabled"] and config["UnknownPatient"] == "accept" and config["StudyConflict"] == "follow"
        answers = {}
        for name in FILES:
            data = file_bytes(name)
            answers[name] = pair.both(lambda server: server.post("/instances", data=data))
        for name, (plain, plugin) in answers.items():
            assert plain.status_code == 200, f"plain Orthanc refused {name}: {plain.text}"
            assert_same(f"POST /instances {name} (reconciliation on)", (plain.status_code, plain.json()),
                        (plugin.status_code, plugin.json()))
        wait_until(lambda: len(_unmatched(pair.plugin)) >= len(FILES), 10, "the plugin's ingest history")
        assert sorted(_unmatched(pair.plugin)) == sorted(uids_of(name)["patient"] for name in FILES), (
            "reconciliation did not run on the plugin's uploads (expected 'unmatched' for each): "
            f"{pair.plugin.get('/neuronova/history?limit=50').text[:1000]}")
        stored = {name: plain.json() for name, (plain, _) in answers.items()}
        SOURCE_IDS.update(answer[key] for answer in stored.values()
                          for key in ("ID", "ParentSeries", "ParentStudy", "ParentPatient"))
        yield pair, stored
    finally:
        pair.stop()


def _unmatched(server):
    """Patients of the uploads the plugin reconciled and found unknown to the EMR (its ingest history)."""
    entries = server.get("/neuronova/history?action=unmatched&limit=100").json()["entries"]
    return [entry["patient_before"] for entry in entries]


def _status(what, plain, plugin):
    assert plain.status_code == plugin.status_code, (
        f"{what}: HTTP status plain {plain.status_code} vs plugin {plugin.status_code} "
        f"(plain: {plain.text[:300]!r}; plugin: {plugin.text[:300]!r})")


def _masked(value):
    return Masker(KNOWN, SOURCE_IDS)(value)


def _everything(server):
    """Every patient with its studies' and instances' main tags: what the server holds, masked."""
    patients = []
    for patient in server.get("/patients?expand").json():
        studies = [server.get(f"/studies/{s}").json()["MainDicomTags"] for s in patient["Studies"]]
        instances = server.get(f"/patients/{patient['ID']}/instances").json()
        patients.append(_masked({"patient": patient["MainDicomTags"], "studies": studies,
                                 "instances": len(instances)}))  # each masked on its own, then sorted
    for patient in patients:
        patient["studies"].sort(key=lambda s: json.dumps(s, sort_keys=True))
    return sorted(patients, key=lambda p: json.dumps(p, sort_keys=True))


def _same_store(pair, what):
    assert_same(what + ": every patient, its studies and instance count", *pair.both(_everything))
    plain, plugin = pair.both(lambda server: server.get("/statistics").json())
    check_statistics(what + ": GET /statistics", plain, plugin, pair.plugin, pair.plugin.instances())


def test_uploads_unchanged(reconciled):
    """Unknown patients are accepted as they are: the same patients, studies and tags as plain."""
    pair, stored = reconciled
    _same_store(pair, "after POST /instances of files with patients unknown to the EMR")
    for name, answer in stored.items():
        path = f"/instances/{answer['ID']}/tags?simplify"
        assert_same(f"GET {path} ({name})", *pair.both(lambda server: server.get(path).json()))


def _posted_to_both(pair, path: str, body: dict):
    """POST the same JSON to both servers: same status, plain's 200, the same (masked) answer."""
    plain, plugin = pair.both(lambda server: server.post(path, json=body))
    what = f"POST {path} {json.dumps(body)}"
    _status(what, plain, plugin)
    assert plain.status_code == 200, f"{what}: plain {plain.status_code} {plain.text[:300]}"
    assert_same(what + " answer", _masked(plain.json()), _masked(plugin.json()))
    return what, plain, plugin


def test_anonymized_copy_keeping_study_uid(reconciled):
    """An anonymized copy of a study that keeps its StudyInstanceUID: the copy keeps the anonymized PatientID and
    PatientName on both (it must not follow the original study's patient), the original stays."""
    pair, stored = reconciled
    study = stored["MR_small.dcm"]["ParentStudy"]
    body = {"Keep": ["StudyInstanceUID"], "Force": True}
    path = f"/studies/{study}/anonymize"
    what, plain, plugin = _posted_to_both(pair, path, body)
    copies = (plain.json()["ID"], plugin.json()["ID"])
    tags = [server.get(f"/studies/{copy}").json() for (_, server), copy in zip(pair.servers(), copies)]
    patients = [t["PatientMainDicomTags"] for t in tags]
    assert patients[0]["PatientID"] != uids_of("MR_small.dcm")["patient"], f"plain's copy: {patients[0]}"
    assert_same(what + ": the copy's PatientID / PatientName", _masked(patients[0]), _masked(patients[1]))
    assert_same(what + ": GET /studies/<copy>", _masked(drop(tags[0], {"LastUpdate"})),
                _masked(drop(tags[1], {"LastUpdate"})))
    copies_instances = [instances_snapshot(server, "studies", copy, KNOWN, SOURCE_IDS)
                        for (_, server), copy in zip(pair.servers(), copies)]
    assert_same(what + ": the copy's instances (tags, file, metadata)", *copies_instances)
    _same_store(pair, "after " + what)


def test_patient_modify_without_keep_source(reconciled):
    """POST /patients/{id}/modify replacing PatientID, KeepSource false: the instances move to the new patient on
    both (the plugin's Orthanc must keep them, not lose them with the source)."""
    pair, stored = reconciled
    patient = stored["CT_small.dcm"]["ParentPatient"]
    body = {"Replace": {"PatientID": "DIFF-RECONCILED-1", "PatientName": "Moved^Patient"}, "KeepSource": False,
            "Force": True}
    path = f"/patients/{patient}/modify"
    what, plain, plugin = _posted_to_both(pair, path, body)
    new = (plain.json()["ID"], plugin.json()["ID"])
    counts = [len(server.get(f"/patients/{patient_id}/instances").json())
              for (_, server), patient_id in zip(pair.servers(), new)]
    assert counts[0] == 1, f"{what}: plain's new patient has {counts[0]} instances"
    assert_same(what + ": instances of the new patient", counts[0], counts[1])
    assert_same(what + ": the old patient is gone", *pair.both(lambda s: s.get(f"/patients/{patient}").status_code))
    moved = [instances_snapshot(server, "patients", patient_id, KNOWN, SOURCE_IDS)
             for (_, server), patient_id in zip(pair.servers(), new)]
    assert_same(what + ": the new patient's instances (tags, file, metadata)", *moved)
    _same_store(pair, "after " + what)


def test_patient_anonymize_with_keep(reconciled):
    pair, stored = reconciled
    patient = stored["rtplan.dcm"]["ParentPatient"]
    body = {"Keep": ["PatientSex", "StudyDescription"], "Replace": {"PatientName": "Anon^Reconciled"},
            "Transcode": "1.2.840.10008.1.2.1"}  # rtplan.dcm is Implicit VR
    path = f"/patients/{patient}/anonymize"
    what, plain, plugin = _posted_to_both(pair, path, body)
    new = (plain.json()["ID"], plugin.json()["ID"])
    snapshots = [instances_snapshot(server, "patients", patient_id, KNOWN, SOURCE_IDS)
                 for (_, server), patient_id in zip(pair.servers(), new)]
    assert_same(what + ": the anonymized patient's instances (tags, file, metadata)", *snapshots)
    _same_store(pair, "after " + what)
