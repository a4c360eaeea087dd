"""A study lives under one patient, under any race: the plugin claims a study's patient itself,
atomically, when it decides the first instance, and keeps the claim across restarts."""

from functools import partial

import pytest
from pydicom.uid import generate_uid

from support.concurrency import at_once
from support.dicom_files import make_series, parse
from support.servers import OrthancServer

HONG, KIM = "P-2024-001234", "P-2024-001235"  # both in the embedded registry's demo patients
PATIENT_TAGS = {HONG: {"PatientID": HONG, "PatientName": "Hong^Gildong", "PatientBirthDate": "19800115",
                       "PatientSex": "M"},
                KIM: {"PatientID": KIM, "PatientName": "Kim^Cheolsu", "PatientBirthDate": "19750520",
                      "PatientSex": "M"}}


def _halves(tmp_path, study: str) -> tuple[list[bytes], list[bytes]]:
    def read(paths):
        return [open(path, "rb").read() for path in paths]
    (tmp_path / "a").mkdir(exist_ok=True)
    (tmp_path / "b").mkdir(exist_ok=True)
    return (read(make_series(tmp_path / "a", 6, study_uid=study, **PATIENT_TAGS[HONG])),
            read(make_series(tmp_path / "b", 6, study_uid=study, **PATIENT_TAGS[KIM])))


def _send_at_once(pacs, halves, uri_of, headers=None) -> list:
    answers = []

    def send(files, uri):
        for data in files:
            answers.append(pacs.post(uri, data=data, headers=headers or {}))

    at_once(*[partial(send, files, uri_of(index)) for index, files in enumerate(halves)])
    return answers


def _patients_of_study(pacs, study: str) -> set[str]:
    found = pacs.post("/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study}}).json()
    return {parse(pacs.get(f"/instances/{instance}/file").content).PatientID for instance in found}


@pytest.mark.parametrize("trial", range(6))
def test_two_rest_uploads_of_one_new_study_under_two_patients_end_under_one(pacs, tmp_path, trial):
    """POST /instances, each half under another known patient: the second half follows the first."""
    study = generate_uid()
    answers = _send_at_once(pacs, _halves(tmp_path, study), lambda index: "/instances",
                            {"Content-Type": "application/dicom"})
    assert all(answer.status_code == 200 for answer in answers)
    assert len(_patients_of_study(pacs, study)) == 1
    studies = pacs.post("/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study}}).json()
    assert len(studies) == 1


@pytest.mark.parametrize("trial", range(6))
def test_two_assigned_uploads_of_one_new_study_to_two_patients_never_split_it(pacs, tmp_path, trial):
    """The upload route, a person choosing each half's patient: the second choice is refused (409)."""
    study = generate_uid()
    answers = _send_at_once(pacs, _halves(tmp_path, study), lambda index: f"/neuronova/upload/{(HONG, KIM)[index]}",
                            {"Content-Type": "application/dicom"})
    assert {answer.status_code for answer in answers} <= {200, 409}
    assert len(_patients_of_study(pacs, study)) == 1
    stored = sum(answer.status_code == 200 for answer in answers)
    assert stored == len(pacs.post("/tools/find", json={"Level": "Instance",
                                                          "Query": {"StudyInstanceUID": study}}).json())


def test_a_studys_patient_is_kept_across_a_restart(tmp_path):
    server = OrthancServer(str(tmp_path / "orthanc")).start()
    try:
        study = generate_uid()
        first, second = _halves(tmp_path, study)
        assert server.post("/instances", data=first[0]).status_code == 200
        server.stop()
        server.start()
        assert server.post("/instances", data=second[0]).status_code == 200
        assert _patients_of_study(server, study) == {HONG}
    finally:
        server.stop()
