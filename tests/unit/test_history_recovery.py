"""The rows written at start for instances a crash left without one (the kill -9 integration test
proves it on a real Orthanc; this checks the paging and the choice of rows)."""

import json

from neuronova.errors import NotFound
from neuronova.history import HistoryEntry, IngestHistory
from neuronova.history_recovery import recover_missing_rows


class FakeOrthanc:
    """Orthanc's /changes and instance routes, for instances i1..iN (i3 deleted since)."""

    def __init__(self, count: int):
        self.changes = [{"Seq": n, "ChangeType": "NewInstance" if n % 2 else "NewSeries", "ID": f"i{n}"}
                        for n in range(1, count + 1)]

    def __call__(self, uri: str) -> bytes:
        if uri == "/changes?last":
            return json.dumps({"Last": len(self.changes)}).encode()
        if uri.startswith("/changes?since="):
            since, limit = (int(part.split("=")[1]) for part in uri.split("?")[1].split("&"))
            page = self.changes[since:since + limit]
            return json.dumps({"Changes": page, "Done": since + limit >= len(self.changes),
                               "Last": page[-1]["Seq"] if page else since}).encode()
        instance = uri.split("/")[2]
        if instance == "i3":
            raise NotFound("deleted since")
        if uri.endswith("/attachments/dicom/info"):
            return json.dumps({"Uuid": f"file-{instance}"}).encode()
        return json.dumps({"SOPInstanceUID": f"sop-{instance}", "StudyInstanceUID": "S", "PatientID": "P"}).encode()


def test_only_the_instances_without_a_row_get_one(tmp_path):
    history = IngestHistory.sqlite(str(tmp_path / "h.sqlite"))
    history.record(HistoryEntry("rest", "", "sop-i1", "S", "P", "P", "unchanged", "", "", 1, 1, 1.0,
                                attachment="file-i1"))
    written = recover_missing_rows(FakeOrthanc(2500), history, lambda uuid: (100, 40))
    rows = history.query(action="recovered", limit=10000)
    # the latest 2000 changes: seq 501..2500, NewInstance for the odd ones, i3 deleted, i1 outside them
    assert written == len(rows) == 1000
    assert {row["sop_instance_uid"] for row in rows} == {f"sop-i{n}" for n in range(501, 2501, 2)}
    assert rows[0]["bytes_before"] == 100 and rows[0]["bytes_after"] == 40 and rows[0]["patient_after"] == "P"
    assert recover_missing_rows(FakeOrthanc(2500), history, lambda uuid: (100, 40)) == 0  # once only
    history.close()


def test_a_deleted_instance_and_a_row_already_there_are_left_alone(tmp_path):
    history = IngestHistory.sqlite(str(tmp_path / "h.sqlite"))
    history.record(HistoryEntry("rest", "", "sop-i1", "S", "P", "P", "unchanged", "", "", 1, 1, 1.0,
                                attachment="file-i1"))
    assert recover_missing_rows(FakeOrthanc(5), history, lambda uuid: (0, 0)) == 1  # i5 only (i3 deleted)
    assert [row["sop_instance_uid"] for row in history.query(action="recovered")] == ["sop-i5"]
    history.close()
