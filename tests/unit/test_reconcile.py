"""Reconciliation decisions and the ingest history, without Orthanc."""

import pytest

from neuronova.directory import EmbeddedRegistry, Identifier, Patient
from neuronova.errors import DirectoryUnavailable
from neuronova.history import HistoryEntry, IngestHistory
from neuronova.reconcile import OwnersNotLoaded, StudyOwners, orthanc_study_id, Identity, ReconcileSettings, Reconciler

HONG = Patient("P-1", "Hong^Gildong", "1980-01-15", "male", (Identifier("CT1-42", "SCANNER"), Identifier("OLD-7")))
KIM = Patient("P-2", "Kim^Cheolsu", "1975-05-20", "male")


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class CountingDirectory:
    def __init__(self, registry):
        self.registry, self.calls, self.down = registry, 0, False

    def resolve(self, identifier, issuer=""):
        self.calls += 1
        if self.down:
            raise DirectoryUnavailable("EMR timed out")
        return self.registry.resolve(identifier, issuer)


@pytest.fixture
def directory(tmp_path):
    registry = EmbeddedRegistry(str(tmp_path / "r.sqlite"))
    registry.put(HONG)
    registry.put(KIM)
    return CountingDirectory(registry)


def identity(patient_id, study="S1", issuer="", name="X^Y", birth="", sex=""):
    return Identity(patient_id, issuer, name, birth, sex, study)


def reconciler(directory, owners=None, clock=None, **settings):
    return Reconciler(directory, ReconcileSettings(**settings), StudyOwners(owners or {}), clock or Clock())


def test_registry_resolves_canonical_then_other_identifiers_with_issuer(directory):
    registry = directory.registry
    assert registry.resolve("P-1") == HONG
    assert registry.resolve("CT1-42", "SCANNER") == HONG
    assert registry.resolve("CT1-42") == HONG  # one owner without an issuer: still unambiguous
    assert registry.resolve("CT1-42", "OTHER-SCANNER") is None
    assert registry.resolve("nobody") is None


def test_other_identifier_coerces_to_the_canonical_patient(directory):
    decision = reconciler(directory).decide(identity("CT1-42", issuer="SCANNER"))
    assert decision.action == "coerced"
    assert decision.target == {"PatientID": "P-1", "PatientName": "Hong^Gildong",
                               "PatientBirthDate": "19800115", "PatientSex": "M"}


def test_matching_demographics_are_unchanged(directory):
    decision = reconciler(directory).decide(identity("P-2", name="Kim^Cheolsu", birth="19750520", sex="M"))
    assert decision.action == "unchanged"


def test_unknown_patient_follows_the_policy(directory):
    assert reconciler(directory).decide(identity("LOCAL-9")).action == "unmatched"
    rejected = reconciler(directory, unknown_patient="reject").decide(identity("LOCAL-9"))
    assert rejected.action == "rejected" and "LOCAL-9" in rejected.reason


def test_one_lookup_per_study_arrival_and_a_new_one_after_it_ends(directory):
    clock = Clock()
    recon = reconciler(directory, clock=clock, cache_seconds=600)
    for _ in range(500):
        recon.decide(identity("CT1-42", issuer="SCANNER"))
        clock.now += 1  # an image a second: the arrival goes on
    assert directory.calls == 1 and recon.lookups == 1
    clock.now += 601
    recon.decide(identity("CT1-42", issuer="SCANNER"))
    assert directory.calls == 2


def test_emr_down_gives_unverified_retried_after_a_short_while(directory):
    clock = Clock()
    recon = reconciler(directory, clock=clock)
    directory.down = True
    assert recon.decide(identity("CT1-42", issuer="SCANNER")).action == "unverified"
    assert recon.decide(identity("CT1-42", issuer="SCANNER")).action == "unverified"
    assert directory.calls == 1 and recon.lookup_errors == 1
    directory.down = False
    clock.now += 6
    assert recon.decide(identity("CT1-42", study="S2", issuer="SCANNER")).action == "coerced"
    # S1 is stored under CT1-42 by now (claimed by its first instance): it is followed, not split
    later = recon.decide(identity("CT1-42", issuer="SCANNER"))
    assert later.action == "conflict" and later.target["PatientID"] == "CT1-42"


def test_emr_down_mid_series_follows_the_studys_patient(directory):
    recon = reconciler(directory)
    first = recon.decide(identity("CT1-42", issuer="SCANNER"))
    assert first.action == "coerced"  # and S1 is claimed for P-1 at once
    directory.down = True
    decision = recon.decide(identity("OLD-7"))  # an identity not seen yet in this study: the EMR is asked
    assert decision.action == "unverified" and decision.target["PatientID"] == "P-1"


def test_a_study_stored_under_another_patient_is_followed_or_rejected(directory):
    owner = {"PatientID": "P-1", "PatientName": "Hong^Gildong", "PatientBirthDate": "19800115", "PatientSex": "M"}
    follow = reconciler(directory, owners={"S1": owner}).decide(identity("P-2"))
    assert follow.action == "conflict" and follow.target == owner
    assert "already stored under patient P-1" in follow.reason
    assert reconciler(directory, owners={"S1": owner}, study_conflict="reject").decide(identity("P-2")).action == "rejected"


def test_history_filters_newest_first_and_study_sizes(tmp_path):
    history = IngestHistory.sqlite(str(tmp_path / "h.sqlite"))

    def entry(sop, study, patient, action, before, after):
        return HistoryEntry("rest", "", sop, study, patient, patient, action, "1.2.840.10008.1.2.1",
                            "1.2.840.10008.1.2.4.201", before, after, 1.0)
    history.record(entry("1", "S1", "P-1", "coerced", 100, 40))
    history.record(entry("2", "S1", "P-1", "unchanged", 100, 50))
    history.record(entry("2", "S1", "P-1", "unchanged", 100, 50))  # sent twice, stored once
    history.record(entry("3", "S2", "P-2", "unmatched", 10, 10))
    assert [e["sop_instance_uid"] for e in history.query()] == ["3", "2", "2", "1"]
    assert [e["sop_instance_uid"] for e in history.query(study="S1", action="coerced")] == ["1"]
    assert len(history.query(patient="P-2")) == 1 and len(history.query(limit=2)) == 2
    assert history.study_sizes(["S1", "S2"]) == {"S1": (200, 90), "S2": (10, 10)}
    history.close()


def test_an_explicit_assignment_may_not_split_a_stored_study(directory):
    owner = {"PatientID": "P-1", "PatientName": "Hong^Gildong", "PatientBirthDate": "19800115", "PatientSex": "M"}
    recon = reconciler(directory, owners={"S1": owner})
    assert recon.decide_assigned(identity("P-1", name="Hong^Gildong")).action == "assigned"
    refused = recon.decide_assigned(identity("P-2", name="Kim^Cheolsu"))
    assert refused.action == "rejected" and "already stored under patient P-1" in refused.reason
    assert recon.decide_assigned(identity("P-2", study="S2")).action == "assigned"


def test_study_owners_are_claimed_once_and_released_by_orthancs_study_id():
    owners = StudyOwners({"S1": {"PatientID": "P-1", "PatientName": "A^B", "PatientBirthDate": "", "PatientSex": ""}})
    owners.claim("S1", {"PatientID": "P-2"})  # the first claim wins
    assert owners.settle("S1", {"PatientID": "P-3"})["PatientID"] == "P-1"
    owners.release(orthanc_study_id("P-2", "S1"))  # another patient's study of that UID: not this claim
    assert owners.settle("S1", {"PatientID": "P-3"})["PatientID"] == "P-1"
    owners.release(orthanc_study_id("P-1", "S1"))
    assert owners.settle("S1", {"PatientID": "P-3"})["PatientID"] == "P-3"  # free again: this claim wins


def test_orthanc_study_id_is_orthancs_own():
    # CT_small.dcm as stored by Orthanc 1.10.1 (its /studies answer)
    assert orthanc_study_id("1CT1", "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322") == \
        "8a8cf898-ca27c490-d0c7058c-929d0581-2bbf104d"


def test_before_orthancs_studies_are_read_nothing_is_decided_and_early_claims_lose(monkeypatch):
    owners = StudyOwners()
    monkeypatch.setattr(StudyOwners, "LOAD_WAIT_SECONDS", 0.01)
    with pytest.raises(OwnersNotLoaded):
        owners.settle("S1", {"PatientID": "P-3"})
    owners.claim("S1", {"PatientID": "P-9"})  # e.g. an Orthanc-made instance stored meanwhile
    owners.claim("S2", {"PatientID": "P-2"})
    owners.load({"S1": {"PatientID": "P-1"}})
    assert owners.settle("S1", {"PatientID": "P-3"})["PatientID"] == "P-1"
    assert owners.settle("S2", {"PatientID": "P-3"})["PatientID"] == "P-2"
