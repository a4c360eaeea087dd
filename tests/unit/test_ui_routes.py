"""The browser side's routes without Orthanc: static files, the study list from fake Pacs answers."""

from __future__ import annotations

import json

import pytest

from neuronova.http import Request, answer
from neuronova.errors import CoreCannotAnswer
from neuronova.ui import routes
from neuronova.ui.routes import StaticFiles, StudyList, app_redirect, explorer_extension_js


@pytest.fixture
def static_dir(tmp_path):
    (tmp_path / "index.html").write_text("<!DOCTYPE html><title>x</title>")
    (tmp_path / "app.js").write_text("console.log(1)")
    (tmp_path / "style.css").write_text("body{}")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "logo.svg").write_text("<svg/>")
    (tmp_path / "notes.md").write_text("not served: unknown type")
    (tmp_path / ".hidden.js").write_text("not served: hidden")
    (tmp_path.parent / "secret.txt").write_text("outside the static folder")
    return tmp_path


def get(handler, *groups, method="GET", query=None):
    return answer(handler, Request(method=method, uri="/x", groups=groups, query=query or {}))


@pytest.mark.parametrize("name, content_type", [
    ("index.html", "text/html; charset=utf-8"),
    ("app.js", "text/javascript; charset=utf-8"),
    ("style.css", "text/css; charset=utf-8"),
    ("img/logo.svg", "image/svg+xml"),
])
def test_static_files_with_their_content_types(static_dir, name, content_type):
    response = get(StaticFiles(str(static_dir)), name)
    assert response.status == 200
    assert response.content_type == content_type
    assert response.body == (static_dir / name).read_bytes()
    assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_folder_answers_its_index(static_dir):
    assert get(StaticFiles(str(static_dir)), "").body == (static_dir / "index.html").read_bytes()


@pytest.mark.parametrize("name", [
    "../secret.txt", "..%2Fsecret.txt", "img/../../secret.txt", "/etc/passwd", "%2e%2e/secret.txt",
    "img/../index.html", "./index.html", "img\\..\\index.html", "notes.md", ".hidden.js", "nope.js",
    "INDEX.HTML", "index.html\0.js", "img/", "img",
])
def test_only_the_listed_files_are_reachable(static_dir, name):
    response = get(StaticFiles(str(static_dir)), name)
    assert response.status == 404
    assert response.content_type == "application/json"
    assert json.loads(response.body)["success"] is False


def test_static_files_answer_get_only(static_dir):
    response = get(StaticFiles(str(static_dir)), "index.html", method="POST")
    assert response.status == 405 and response.headers["Allow"] == "GET"


def test_the_shipped_files_are_served():
    files = StaticFiles()
    assert {"index.html", "upload-dialog.js", "upload-dialog.css", "dashboard.js", "dashboard.css", "i18n.js",
            "worklist.js", "explorer-extension.js"} <= set(files.files)
    for name in files.files:
        assert get(files, name).status == 200


def test_explorer_extension_is_the_static_script():
    script = explorer_extension_js()
    assert "pagebeforecreate" in script and "Upload DICOM" in script
    assert "../neuronova/app/" in script  # relative: works behind a reverse proxy prefix


def test_app_without_slash_sends_the_browser_on():
    response = get(app_redirect)
    assert response.status == 200 and response.content_type.startswith("text/html")
    assert b"index.html" in response.body


# --------------------------------------------------------------------------------------------------
# The study list

def study(number: int, last_update: str, study_date: str = "20240131", series: int = 1) -> dict:
    return {
        "ID": f"study-{number}",
        "Type": "Study",
        "LastUpdate": last_update,
        "MainDicomTags": {"StudyInstanceUID": f"1.2.3.{number}", "StudyDate": study_date, "StudyTime": "101530.25",
                          "StudyDescription": f"Study {number}", "AccessionNumber": f"A{number}"},
        "PatientMainDicomTags": {"PatientID": f"P-{number}", "PatientName": f"Doe^Number{number}",
                                 "PatientBirthDate": "19800115"},
        "Series": [f"series-{number}-{i}" for i in range(series)],
    }


class FakePacs:
    """Orthanc's built-in GET answers from a dict; records what was asked."""

    def __init__(self, studies: list[dict], missing: tuple[str, ...] = ()):
        self.studies = studies
        self.missing = missing
        self.asked: list[str] = []

    def core_get(self, uri: str) -> bytes:
        self.asked.append(uri)
        if uri == "/statistics":
            return json.dumps({"CountStudies": len(self.studies)}).encode()
        if uri.startswith("/studies?expand"):
            chosen = self.studies
            if "&since=" in uri:
                since = int(uri.split("since=")[1].split("&")[0])
                limit = int(uri.split("limit=")[1])
                chosen = self.studies[since:since + limit]
            return json.dumps(chosen).encode()
        study_id = uri.split("/")[2]
        if study_id in self.missing:
            raise CoreCannotAnswer(f"Orthanc cannot answer {uri}: unknown resource")
        number = int(study_id.split("-")[1])
        if uri.endswith("/statistics"):
            return json.dumps({"CountInstances": 10 * number, "CountSeries": 2, "DiskSize": 1000 * number,
                               "DiskSizeMB": 0, "UncompressedSize": 1000 * number}).encode()
        if uri.endswith("/series"):
            return json.dumps([{"MainDicomTags": {"Modality": "MR"}}, {"MainDicomTags": {"Modality": "CT"}},
                               {"MainDicomTags": {"Modality": "MR"}}, {"MainDicomTags": {}}]).encode()
        raise AssertionError(f"unexpected GET {uri}")


class FakeHistory:
    def __init__(self, sizes: dict[str, tuple[int, int]]):
        self.sizes = sizes
        self.asked: list[list[str]] = []

    def study_sizes(self, study_uids: list[str]) -> dict[str, tuple[int, int]]:
        self.asked.append(list(study_uids))
        return {uid: self.sizes[uid] for uid in study_uids if uid in self.sizes}


def study_list(handler, **query):
    response = get(handler, query=query)
    assert response.status == 200, response.body
    return json.loads(response.body)


def test_study_list_rows_newest_first_with_counts_sizes_and_saving():
    pacs = FakePacs([study(1, "20240101T080000"), study(2, "20240301T120000"), study(3, "20240201T090000")])
    history = FakeHistory({"1.2.3.2": (5000, 1800)})  # on disk: less than Orthanc's DiskSize (received sizes)
    answer_ = study_list(StudyList(pacs, history))
    assert answer_["success"] is True and answer_["total"] == 3
    assert [row["id"] for row in answer_["studies"]] == ["study-2", "study-3", "study-1"]
    assert answer_["studies"][0] == {
        "id": "study-2",
        "study_instance_uid": "1.2.3.2",
        "patient_id": "P-2",
        "patient_name": "Doe^Number2",
        "patient_birth_date": "1980-01-15",
        "study_date": "2024-01-31",
        "study_time": "10:15:30",
        "study_description": "Study 2",
        "accession_number": "A2",
        "modalities": ["CT", "MR"],
        "series_count": 2,
        "instance_count": 20,
        "stored_bytes": 1800,
        "received_bytes": 5000,
        "saved_bytes": 3200,
        "saving_percent": 64.0,
        "last_update": "2024-03-01T12:00:00Z",
        "explorer_url": "app/explorer.html#study?uuid=study-2",
        "viewer_url": "neuronova/viewer/viewer?StudyInstanceUIDs=1.2.3.2",
    }
    # No history for a study (stored before the plugin, or history not kept): no saving, not zero.
    assert answer_["studies"][1]["saved_bytes"] is None and answer_["studies"][1]["saving_percent"] is None
    assert history.asked == [["1.2.3.2", "1.2.3.3", "1.2.3.1"]]


def test_same_last_update_falls_back_on_the_study_date():
    pacs = FakePacs([study(1, "20240101T080000", "20200101"), study(2, "20240101T080000", "20230101")])
    assert [row["id"] for row in study_list(StudyList(pacs))["studies"]] == ["study-2", "study-1"]


def test_limit_asks_only_the_shown_studies_for_details():
    pacs = FakePacs([study(n, f"202401{n:02d}T000000") for n in range(1, 8)])
    rows = study_list(StudyList(pacs), limit="2")["studies"]
    assert [row["id"] for row in rows] == ["study-7", "study-6"]
    detail = [uri for uri in pacs.asked if uri.startswith("/studies/")]
    assert sorted(detail) == ["/studies/study-6/series", "/studies/study-6/statistics",
                              "/studies/study-7/series", "/studies/study-7/statistics"]


def test_a_large_pacs_is_read_through_a_window_of_the_newest_studies():
    pacs = FakePacs([study(n, f"2024{(n // 28) + 1:02d}{(n % 28) + 1:02d}T000000") for n in range(1, 31)])
    rows = study_list(StudyList(pacs, window=10), limit="3")["studies"]
    assert "/studies?expand&since=20&limit=10" in pacs.asked
    assert [row["id"] for row in rows] == ["study-30", "study-29", "study-28"]


def test_a_study_deleted_meanwhile_is_left_out():
    pacs = FakePacs([study(1, "20240101T080000"), study(2, "20240102T080000")], missing=("study-2",))
    assert [row["id"] for row in study_list(StudyList(pacs))["studies"]] == ["study-1"]


def test_a_failing_history_leaves_the_saving_empty():
    class BrokenHistory:
        def study_sizes(self, study_uids):
            raise OSError("disk gone")

    rows = study_list(StudyList(FakePacs([study(1, "20240101T080000")]), BrokenHistory()))["studies"]
    assert rows[0]["saved_bytes"] is None and rows[0]["stored_bytes"] == 1000


def test_empty_pacs():
    assert study_list(StudyList(FakePacs([]), FakeHistory({}))) == {"success": True, "studies": [], "total": 0}


def test_study_list_says_whether_the_viewer_can_open_studies():
    status = {"available": False, "error": "the OHIF Viewer is not installed", "pinned": "3.13.2"}
    assert study_list(StudyList(FakePacs([]), viewer=lambda: status))["viewer"] == status


@pytest.mark.parametrize("limit", ["0", "501", "-3", "ten", ""])
def test_bad_limit_is_a_400(limit):
    response = get(StudyList(FakePacs([])), query={"limit": limit})
    assert response.status == 400
    assert "limit" in json.loads(response.body)["error"]


def test_study_list_answers_get_only():
    assert get(StudyList(FakePacs([])), method="DELETE").status == 405


@pytest.mark.parametrize("raw, expected", [("20240131", "2024-01-31"), ("", ""), ("2024", "2024")])
def test_iso_date(raw, expected):
    assert routes._iso_date(raw) == expected


@pytest.mark.parametrize("raw, expected", [("101530.25", "10:15:30"), ("1015", "10:15"), ("", ""), ("10", "10")])
def test_iso_time(raw, expected):
    assert routes._iso_time(raw) == expected
