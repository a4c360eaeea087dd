"""The worklist, moving a study, the history page and the Korean UI, in headless Chromium on a real
Orthanc with the plugin (authentication on: the user who moves is recorded)."""

import datetime
import re

import pytest
from playwright.sync_api import expect

from support.dicom_files import make_series, parse, read_bytes
from support.dicom_net import storescu

KIM_AT_THE_SCANNER = {"PatientID": "CT9-0777", "IssuerOfPatientID": "SCANNER-9", "PatientName": "Kim^Cheolsu",
                      "PatientBirthDate": "19750520", "PatientSex": "M"}


@pytest.fixture
def pacs(orthanc_with_login):
    orthanc_with_login.clear()
    yield orthanc_with_login
    assert orthanc_with_login.alive()


def login(pacs):
    return {"http_credentials": {"username": pacs.USER[0], "password": pacs.USER[1]}}


def send(pacs, files):
    sent = storescu(pacs.dicom_port, files, calling_aet="CT9")
    assert sent.returncode == 0, sent.stderr


def test_the_worklist_shows_the_unmatched_study_and_moves_it_to_its_candidate(pacs, browsing, tmp_path):
    send(pacs, make_series(tmp_path, 3, **KIM_AT_THE_SCANNER))
    session = browsing(pacs, locale="en-US", **login(pacs))
    page = session.page
    page.goto("/neuronova/app/index.html#worklist")
    expect(page.locator("#nn-page-title")).to_have_text("Worklist")
    expect(page.locator("#nn-worklist-count")).to_have_text("1")
    row = page.locator("#nn-worklist-body tr")
    expect(row).to_have_count(1)
    expect(row.locator(".nn-patient-id")).to_have_text("CT9-0777")
    expect(row).to_contain_text("Issuer SCANNER-9 \u00b7 born 1975-05-20 \u00b7 sex M")
    expect(row).to_contain_text("CT9")
    expect(row.locator(".nn-action-unmatched")).to_have_text("unmatched 3")
    expect(row).to_contain_text("3 of 3 instances unsettled")
    candidate = row.locator(".nn-candidate")
    expect(candidate).to_have_count(1)
    expect(candidate).to_contain_text("P-2024-001235 Kim^Cheolsu")
    expect(candidate).to_contain_text("born 1975-05-20 \u00b7 same name and birth date")
    session.screenshot("worklist.png", height=420)

    questions = []
    page.once("dialog", lambda dialog: (questions.append(dialog.message), dialog.accept()))
    candidate.get_by_role("button", name="Move this study to P-2024-001235 (Kim^Cheolsu)").click()
    expect(page.locator("#nn-worklist-done")).to_have_text("Study moved to P-2024-001235: 3 instances rewritten.")
    assert questions and questions[0].startswith("Move the study of Kim^Cheolsu (3 instances) to P-2024-001235")
    expect(page.locator("#nn-worklist-status")).to_have_text(
        "Nothing to settle: every stored image has its EMR patient.")
    expect(page.locator("#nn-worklist-count")).to_be_hidden()

    page.click("#nn-tab-studies")
    study_row = page.locator("#nn-studies-body tr")
    expect(study_row).to_have_count(1)
    expect(study_row.locator(".nn-patient-id")).to_have_text("P-2024-001235")
    (entry, *_) = pacs.get("/neuronova/history", params={"action": "moved"}).json()["entries"]
    assert entry["user_name"] == "radiographer"


def test_a_study_is_moved_from_the_study_list(pacs, browsing):
    assert pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"),
                     headers={"Content-Type": "application/dicom"}).status_code == 200
    session = browsing(pacs, locale="en-US", **login(pacs))
    page = session.page
    page.goto("/neuronova/app/index.html")
    row = page.locator("#nn-studies-body tr")
    expect(row.locator(".nn-patient-id")).to_have_text("P-2024-001234")
    row.locator(".nn-open-move").click()
    dialog = page.locator("#nn-move-dialog")
    expect(dialog.get_by_role("heading", name="Move study to a patient")).to_be_visible()
    expect(page.locator("#nn-move-confirm")).to_be_disabled()
    page.fill("#nn-move-search", "Kim")
    label = "P-2024-001235 - Kim^Cheolsu (1975-05-20)"
    expect(page.locator("#nn-move-patient option", has_text=label)).to_have_count(1)
    page.select_option("#nn-move-patient", label=label)
    session.screenshot("move-dialog.png", height=520)
    page.once("dialog", lambda confirm: confirm.accept())
    page.click("#nn-move-confirm")
    expect(dialog).to_be_hidden()
    expect(row.locator(".nn-patient-id")).to_have_text("P-2024-001235")
    expect(row.locator(".nn-patient-name")).to_have_text("Kim^Cheolsu")

    # Moved again to the patient it has: settled, nothing rewritten.
    row.locator(".nn-open-move").click()
    page.fill("#nn-move-search", "P-2024-001235")
    expect(page.locator("#nn-move-patient option")).to_have_text(["Choose a patient", label])
    page.select_option("#nn-move-patient", label=label)
    page.once("dialog", lambda confirm: confirm.accept())
    page.click("#nn-move-confirm")
    expect(dialog).to_be_hidden()
    expect(row.locator(".nn-patient-id")).to_have_text("P-2024-001235")


def test_the_history_page_filters_and_pages(pacs, browsing, tmp_path):
    files = make_series(tmp_path, 52, **KIM_AT_THE_SCANNER)
    study_uid = parse(open(files[0], "rb").read()).StudyInstanceUID
    send(pacs, files)
    (study,) = pacs.get("/studies").json()
    assert pacs.post(f"/neuronova/studies/{study}/patient/P-2024-001235").status_code == 200
    session = browsing(pacs, locale="en-US", **login(pacs))
    page = session.page
    page.goto("/neuronova/app/index.html#history")
    rows = page.locator("#nn-history-body tr")
    expect(rows).to_have_count(50)
    page.fill("#nn-history-study", study_uid)  # the module's earlier tests have rows too
    page.get_by_role("button", name="Apply").click()
    expect(rows.first.locator(".nn-action")).to_have_text("moved")  # newest first
    expect(page.locator("#nn-history-page")).to_have_text("Page 1")
    expect(page.locator("#nn-history-previous")).to_be_disabled()
    session.screenshot("history.png", height=620)
    page.click("#nn-history-next")
    expect(page.locator("#nn-history-page")).to_have_text("Page 2")
    expect(rows).to_have_count(50)
    page.click("#nn-history-next")
    expect(rows).to_have_count(4)
    expect(rows.first.locator(".nn-action")).to_have_text("unmatched")
    expect(page.locator("#nn-history-next")).to_be_disabled()

    page.select_option("#nn-history-action", "moved")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#nn-history-page")).to_have_text("Page 1")
    expect(rows).to_have_count(50)
    expect(page.locator("#nn-history-body .nn-history-user")).to_have_text(["radiographer"] * 50)
    page.click("#nn-history-next")
    expect(rows).to_have_count(2)

    page.get_by_role("button", name="Reset").click()
    page.fill("#nn-history-study", study_uid)
    page.fill("#nn-history-patient", "CT9-0777")
    page.fill("#nn-history-date", datetime.date.today().isoformat())
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_count(50)
    page.fill("#nn-history-date", "2001-02-03")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_text(["No entry matches the filters."])
    page.fill("#nn-history-date", "")
    page.fill("#nn-history-patient", "NOBODY")
    page.get_by_role("button", name="Apply").click()
    expect(rows).to_have_text(["No entry matches the filters."])


def test_the_worklist_pages_fifty_studies_at_a_time(pacs, browsing, tmp_path):
    files = [path for index in range(51)
             for path in make_series(tmp_path, 1, **{**KIM_AT_THE_SCANNER, "PatientID": f"CT9-{index:04d}"})]
    send(pacs, files)
    session = browsing(pacs, locale="en-US", **login(pacs))
    page = session.page
    page.goto("/neuronova/app/index.html#worklist")
    rows = page.locator("#nn-worklist-body tr")
    expect(page.locator("#nn-worklist-status")).to_have_text("51 studies to settle.")
    expect(rows).to_have_count(50)
    expect(rows.first.locator(".nn-patient-id")).to_have_text("CT9-0050")  # newest first
    expect(page.locator("#nn-worklist-page")).to_have_text("Page 1 of 2")
    expect(page.locator("#nn-worklist-previous")).to_be_disabled()
    page.click("#nn-worklist-next")
    expect(rows).to_have_count(1)
    expect(rows.locator(".nn-patient-id")).to_have_text("CT9-0000")
    expect(page.locator("#nn-worklist-page")).to_have_text("Page 2 of 2")
    expect(page.locator("#nn-worklist-next")).to_be_disabled()

    # The last page's study is settled elsewhere: the worklist goes back to the page that still exists.
    (study,) = [item["study"] for item in pacs.get("/neuronova/worklist", params={"offset": 50}).json()["studies"]]
    assert pacs.post(f"/neuronova/studies/{study}/patient/P-2024-001235").status_code == 200
    page.click("#nn-refresh")
    expect(page.locator("#nn-worklist-status")).to_have_text("50 studies to settle.")
    expect(rows).to_have_count(50)
    expect(page.locator("#nn-worklist-pager")).to_be_hidden()


def test_the_dashboard_the_dialog_and_the_worklist_in_korean(pacs, browsing, files, tmp_path):
    assert pacs.put("/neuronova/patients/P-KO-0001", json={
        "name": "홍^길동", "birth_date": "1990-03-07", "gender": "male"}).status_code in (200, 201)
    send(pacs, make_series(tmp_path, 2, **KIM_AT_THE_SCANNER))
    session = browsing(pacs, locale="ko-KR", **login(pacs))
    page = session.page
    page.goto("/neuronova/app/index.html")
    expect(page.locator("html")).to_have_attribute("lang", "ko")
    expect(page.locator("#nn-page-title")).to_have_text("검사 목록")
    expect(page.locator("#nn-tab-worklist")).to_contain_text("확인 필요")
    expect(page.locator("#nn-studies thead th")).to_have_text(
        ["환자", "검사일", "설명", "모달리티", "시리즈", "인스턴스", "저장 용량", "압축으로 절감", "열기"])
    expect(page.locator("#nn-filter")).to_have_attribute("placeholder", "환자, ID, 설명 또는 모달리티로 필터...")
    expect(page.locator("#nn-list-status")).to_contain_text("검사 1건 중 1건 표시")

    page.get_by_role("button", name="DICOM 업로드", exact=True).click()
    dialog = page.locator("#nn-upload-dialog")
    expect(dialog.get_by_role("heading", name="DICOM 파일 업로드")).to_be_visible()
    expect(page.locator("#nn-upload-files-title")).to_have_text("DICOM 파일 선택")
    expect(dialog.locator("label[for=nn-upload-patient-search]")).to_have_text("환자 배정 (선택)")
    expect(page.locator("#nn-upload-patient-search")).to_have_attribute("placeholder", "환자 검색...")
    expect(page.locator("#nn-upload-patient option").first).to_have_text("선택된 환자 없음 (기존 메타데이터 사용)")
    expect(page.locator("#nn-upload-cancel")).to_have_text("취소")
    expect(page.locator("#nn-upload-start")).to_have_text("업로드")
    page.set_input_files("#nn-upload-files", [files["photo.jpg"]])
    expect(page.locator("#nn-upload-refused-message")).to_have_text("DICOM 파일(.dcm 또는 .dicom)을 선택하세요")
    expect(page.locator("#nn-upload-refused-names")).to_have_text("제외됨: photo.jpg")
    page.set_input_files("#nn-upload-files", [files["CT_small.dcm"]])
    expect(page.locator("#nn-upload-files-summary")).to_have_text("파일 1개, 38.3 KB")
    page.fill("#nn-upload-patient-search", "홍")
    hangul = "P-KO-0001 - 홍^길동 (1990-03-07)"  # the name in Hangul as the EMR stores it
    expect(page.locator("#nn-upload-patient option", has_text=hangul)).to_have_count(1)
    page.select_option("#nn-upload-patient", label=hangul)
    session.screenshot("upload-dialog-ko.png")
    page.click("#nn-upload-start")
    success = page.locator("#nn-upload-success")
    expect(success).to_contain_text("업로드 및 변환 완료: 파일 1개, 인스턴스 1개 저장, 환자 P-KO-0001.", timeout=60000)
    expect(page.locator("#nn-upload-cancel")).to_have_text("닫기")
    page.click("#nn-upload-cancel")
    expect(page.locator("#nn-studies-body .nn-patient-name", has_text="홍^길동")).to_have_count(1)
    session.screenshot("dashboard-ko.png", height=520)

    page.click("#nn-tab-worklist")
    expect(page.locator("#nn-page-title")).to_have_text("확인 필요")
    row = page.locator("#nn-worklist-body tr")
    expect(row.locator(".nn-action-unmatched")).to_have_text("EMR에 없음 2")
    expect(row).to_contain_text("발급처 SCANNER-9 \u00b7 생년월일 1975-05-20 \u00b7 성별 M")
    expect(row.locator(".nn-candidate")).to_contain_text("같은 이름과 생년월일")
    expect(row.get_by_role("button", name=re.compile("^이 검사를 P-2024-001235"))).to_be_visible()
    session.screenshot("worklist-ko.png", height=420)

    page.click("#nn-tab-history")
    expect(page.locator("#nn-history thead th").first).to_have_text("시각")
    expect(page.locator("#nn-history-action option").first).to_have_text("전체")
    expect(page.locator("#nn-history-body tr").first.locator(".nn-action")).to_have_text("지정")
