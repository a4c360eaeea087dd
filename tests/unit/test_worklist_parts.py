"""The worklist's plain-Python parts: study claims that move, the audit system name, who is asking, the
EMR candidates (a real embedded registry), the configuration keys."""

import base64

import pytest

from neuronova.config import load_settings
from neuronova.dicom.assign import modifying_system
from neuronova.directory import EmbeddedRegistry, Identifier, Patient
from neuronova.errors import ConfigError, DirectoryUnavailable
from neuronova.http import Request, authenticated_user
from neuronova.reconcile import Identity, ReconcileSettings, Reconciler, StudyOwners, orthanc_study_id
from neuronova.worklist.listing import candidates

OLD = {"PatientID": "CT9-0777", "PatientName": "Kim^Cheolsu", "PatientBirthDate": "19750520", "PatientSex": "M"}
NEW = {"PatientID": "P-2", "PatientName": "Kim^Cheolsu", "PatientBirthDate": "19750520", "PatientSex": "M"}


def test_a_moved_claim_survives_the_deletion_of_the_old_study_and_the_old_id_follows():
    owners = StudyOwners({"S1": OLD})
    owners.reassign("S1", NEW)
    assert owners.owner("S1") == NEW
    owners.release(orthanc_study_id("CT9-0777", "S1"))  # Orthanc deleting the study under its old patient
    assert owners.owner("S1") == NEW
    assert owners.moved_away_from("S1", "CT9-0777") and not owners.moved_away_from("S1", "P-2")
    owners.release(orthanc_study_id("P-2", "S1"))  # the study itself deleted: free again
    assert owners.owner("S1") is None and not owners.moved_away_from("S1", "CT9-0777")


def test_a_study_emptied_to_be_stored_again_keeps_its_claim_once():
    owners = StudyOwners({"S1": NEW})
    owners.keep_through_deletion(orthanc_study_id("P-2", "S1"))
    owners.release(orthanc_study_id("P-2", "S1"))
    assert owners.owner("S1") == NEW
    owners.release(orthanc_study_id("P-2", "S1"))
    assert owners.owner("S1") is None


class Directory:
    def __init__(self, patient=None):
        self.patient, self.down = patient, False

    def resolve(self, identifier, issuer=""):
        if self.down:
            raise DirectoryUnavailable("EMR timed out")
        return self.patient if self.patient and identifier == self.patient.patient_id else None


def test_later_instances_with_the_old_id_follow_the_moved_study_and_the_emr_state_is_told():
    owners = StudyOwners({"S1": OLD})
    states = []
    directory = Directory()
    reconciler = Reconciler(directory, ReconcileSettings(), owners, clock=lambda: 0.0)
    reconciler.on_directory_state = states.append
    owners.reassign("S1", NEW)
    decision = reconciler.decide(Identity("CT9-0777", "SCANNER-9", "Kim^Cheolsu", "19750520", "M", "S1"))
    assert (decision.action, decision.target) == ("moved", NEW)
    other = reconciler.decide(Identity("X-1", "", "Other^One", "", "", "S1"))  # not what it was moved from
    assert other.action == "conflict"
    directory.down = True
    assert reconciler.decide(Identity("Z-1", "", "", "", "", "S2")).action == "unverified"
    directory.down = False
    reconciler.decide(Identity("Z-2", "", "", "", "", "S3"))
    assert states == [False, True]


def test_the_audit_item_names_the_user_within_the_64_characters_of_lo():
    assert modifying_system() == "NeuroNova ingest"
    assert modifying_system("radiographer") == "NeuroNova ingest (radiographer)"
    assert len(modifying_system("x" * 100)) == 64


def basic(credentials: str) -> Request:
    return Request("POST", headers={"authorization": "Basic " + base64.b64encode(credentials.encode()).decode()})


def test_the_user_is_the_basic_credentials_name_only_when_orthanc_checks_them():
    assert authenticated_user(basic("김영희:secret:with:colons"), True) == "김영희"
    assert authenticated_user(basic("radiographer:secret"), False) == ""
    assert authenticated_user(Request("POST", headers={"authorization": "Bearer abc"}), True) == ""
    assert authenticated_user(Request("POST", headers={"authorization": "Basic %%%"}), True) == ""
    assert authenticated_user(Request("POST"), True) == ""


@pytest.fixture
def registry(tmp_path):
    registry = EmbeddedRegistry(str(tmp_path / "r.sqlite"))
    registry.put(Patient("P-1", "Hong^Gildong", "1980-01-15", "male", (Identifier("CT1-42", "SCANNER-A"),)))
    registry.put(Patient("P-2", "Kim^Cheolsu", "1975-05-20", "male"))
    registry.put(Patient("P-3", "Kim^Younghee", "1975-05-20", "female"))
    registry.put(Patient("P-4", "KIM^CHEOLSU", "1990-01-01", "male"))
    return registry


def test_candidates_same_id_received_ids_name_and_birth_date(registry):
    found = {c["patient_id"]: c["why"] for c in candidates(registry, "CT1-42", "Hong^G", "", [])}
    assert found == {"P-1": ["same_id"]}  # stored under another issuer: the same ID still names P-1
    found = {c["patient_id"]: c["why"] for c in candidates(registry, "CT9-0777", "Kim^Cheolsu", "19750520",
                                                          ["CT9-0777", "P-1"])}
    assert found == {"P-1": ["received_id"], "P-2": ["same_name_and_birth_date"], "P-3":
                     ["same_family_name_and_birth_date"], "P-4": ["same_name"]}
    assert candidates(registry, "NOBODY", "", "", []) == []


def test_worklist_configuration_keys():
    settings = load_settings({"NeuroNova": {"Worklist": {"ReverifySeconds": 0, "RetrySeconds": 2.5}}})
    assert (settings.worklist.reverify_seconds, settings.worklist.retry_seconds) == (0.0, 2.5)
    assert (load_settings({}).worklist.reverify_seconds, load_settings({}).worklist.retry_seconds) == (300.0, 15.0)
    with pytest.raises(ConfigError, match="NeuroNova.Worklist.RetrySeconds"):
        load_settings({"NeuroNova": {"Worklist": {"RetrySeconds": 0}}})
    with pytest.raises(ConfigError, match="NeuroNova.Worklist.Every"):
        load_settings({"NeuroNova": {"Worklist": {"Every": 1}}})


@pytest.mark.parametrize("config, expected", [
    ({}, False), ({"RemoteAccessAllowed": True}, True), ({"AuthenticationEnabled": True}, True),
    ({"RemoteAccessAllowed": True, "AuthenticationEnabled": False}, False)])
def test_authentication_follows_orthancs_rule(config, expected):
    assert load_settings(config).authentication is expected
