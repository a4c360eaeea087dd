"""The upload dialog and the study list in a real browser (headless Debian Chromium) on a real Orthanc."""

import io
import re
import threading

import pytest
import requests
from playwright.sync_api import expect
from pydicom.uid import generate_uid

from support.dicom_files import make_zip, parse, read_bytes
from support.servers import OrthancServer, wait_until

REFUSED = "Please select a DICOM file (.dcm or .dicom)"
NO_PATIENT = "No patient selected (use existing metadata)"
HONG = "P-2024-001234 - Hong^Gildong (1980-01-15)"
KIM = "P-2024-001235 - Kim^Cheolsu (1975-05-20)"
HTJ2K = "1.2.840.10008.1.2.4.201"


def open_dialog(page):
    page.get_by_role("button", name="Upload DICOM", exact=True).click()
    dialog = page.locator("#nn-upload-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("heading", name="Upload DICOM File")).to_be_visible()
    return dialog


def choose_patient(page, search: str, label: str) -> None:
    page.fill("#nn-upload-patient-search", search)
    expect(page.locator("#nn-upload-patient option", has_text=label)).to_have_count(1)
    page.select_option("#nn-upload-patient", label=label)


def file_row(page, name: str):
    return page.locator("#nn-upload-file-list li", has=page.locator(".nn-file-name", has_text=re.compile(f"^{name}$")))


def test_upload_from_explorer_then_study_list_then_preview(pacs, browsing, files):
    session = browsing(pacs)
    page = session.page
    page.goto("/app/explorer.html")
    dialog = open_dialog(page)
    options = page.locator("#nn-upload-patient option")
    expect(options.first).to_have_text(NO_PATIENT)

    # Two real DICOM files and a JPEG: the JPEG is refused, the others listed with their sizes.
    page.set_input_files("#nn-upload-files", [files["CT_small.dcm"], files["MR_small.dcm"], files["photo.jpg"]])
    expect(page.locator("#nn-upload-refused-message")).to_have_text(REFUSED)
    expect(page.locator("#nn-upload-refused-names")).to_contain_text("photo.jpg")
    expect(page.locator("#nn-upload-file-list li")).to_have_count(2)
    expect(file_row(page, "CT_small.dcm").locator(".nn-file-size")).to_have_text("38.3 KB")
    expect(file_row(page, "MR_small.dcm").locator(".nn-file-size")).to_have_text("9.6 KB")

    # The patient: search "Hong", pick from the filtered dropdown.
    choose_patient(page, "Hong", HONG)
    expect(options).to_have_text([NO_PATIENT, HONG])
    session.screenshot("upload-dialog.png")

    # Upload slowly enough to watch the progress bars move.
    session.throttle_uploads(12 * 1024)
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-start")).to_have_text("Uploading...")
    expect(page.locator("#nn-upload-overall-title")).to_have_text("Uploading...")
    page.wait_for_function("""() => [...document.querySelectorAll('#nn-upload-file-list .nn-progress')]
        .some(bar => +bar.getAttribute('aria-valuenow') > 0 && +bar.getAttribute('aria-valuenow') < 100)""")
    session.screenshot("upload-progress.png")
    expect(page.locator("#nn-upload-overall-progress")).to_have_attribute("aria-valuenow", re.compile(r"^[0-9]{1,2}$"))
    session.throttle_uploads(None)

    success = page.locator("#nn-upload-success")
    expect(success).to_be_visible(timeout=60000)
    expect(success).to_contain_text("2 files, 2 instances stored for patient P-2024-001234")
    expect(success).to_have_css("color", "rgb(29, 94, 29)")
    expect(page.locator("#nn-upload-errors")).to_be_hidden()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        expect(file_row(page, name).locator(".nn-file-status")).to_have_text("Stored")
        expect(file_row(page, name).locator(".nn-progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#nn-upload-overall-progress")).to_have_attribute("aria-valuenow", "100")
    expect(page.locator("#nn-upload-cancel")).to_have_text("Close")
    session.screenshot("upload-done.png")

    # Both stored under the EMR patient, compressed to HTJ2K.
    studies = pacs.get("/studies?expand").json()
    assert len(studies) == 2
    assert {s["PatientMainDicomTags"]["PatientName"] for s in studies} == {"Hong^Gildong"}
    assert {s["PatientMainDicomTags"]["PatientID"] for s in studies} == {"P-2024-001234"}
    ct_uid = parse(read_bytes("CT_small.dcm")).StudyInstanceUID
    ct_study = next(s for s in studies if s["MainDicomTags"]["StudyInstanceUID"] == ct_uid)

    # The RIS dashboard lists them under Hong^Gildong, with the saving from compression.
    page.click("#nn-upload-cancel")
    expect(dialog).to_be_hidden()
    page.goto("/neuronova/app/index.html")
    rows = page.locator("#nn-studies-body tr[data-study-id]")
    expect(rows).to_have_count(2)
    ct_row = page.locator(f"#nn-studies-body tr[data-study-id='{ct_study['ID']}']")
    expect(ct_row).to_contain_text("Hong^Gildong")
    expect(ct_row).to_contain_text("P-2024-001234")
    expect(ct_row).to_contain_text("2004-01-19")
    expect(ct_row.locator(".nn-modality")).to_have_text(["CT"])
    expect(ct_row.locator(".nn-saving")).to_have_text(re.compile(r"^[0-9.]+ KB \([0-9.]+%\)$"))
    expect(page.locator("#nn-orthanc-name")).to_have_text(re.compile("NeuroNova PACS"))
    session.screenshot("study-list.png", height=300)
    page.fill("#nn-filter", "mr")
    expect(rows).to_have_count(1)
    expect(rows.locator(".nn-modality")).to_have_text(["MR"])
    page.fill("#nn-filter", "")
    expect(rows).to_have_count(2)

    # Open it in Orthanc Explorer, go to its series and see the preview (Orthanc's own: HTJ2K only on disk).
    ct_row.get_by_role("link", name=re.compile("Open the study .* in Orthanc Explorer")).click()
    expect(page).to_have_url(re.compile(rf"/app/explorer\.html#study\?uuid={ct_study['ID']}$"))
    page.locator("#list-series li a").first.click()
    with page.expect_response(re.compile(r"/instances/[^/]+/preview")) as preview:
        page.get_by_text("Preview this series").click()
    assert preview.value.status == 200
    assert preview.value.header_value("content-type").startswith("image/")
    instance_id = re.search(r"/instances/([^/]+)/preview", preview.value.url).group(1)
    assert parse(pacs.stored_file(instance_id)).file_meta.TransferSyntaxUID == HTJ2K
    expect(page.locator("#lbImage")).to_be_visible()
    width = page.evaluate("""async url => {
        const image = new Image();
        image.src = url;
        await image.decode();
        return image.naturalWidth;
    }""", preview.value.url)
    assert width == 128  # CT_small is 128 x 128
    session.screenshot("explorer-preview.png")


def test_failed_files_get_a_red_message_with_the_servers_error(pacs, browsing, files, tmp_path):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(b"this is not a DICOM file at all" * 10)
    no_extension = tmp_path / "IM000001"
    no_extension.write_bytes(b"\x00" * 300)
    expected = {name: requests.post(pacs.url + "/neuronova/upload", data=path.read_bytes(),
                                    headers={"Content-Type": "application/dicom"}).json()["error"]
                for name, path in (("broken.dcm", broken), ("IM000001", no_extension))}

    session = browsing(pacs)
    page = session.page
    page.goto("/neuronova/app/index.html")
    open_dialog(page)
    page.set_input_files("#nn-upload-files", [files["CT_small.dcm"], str(broken), str(no_extension)])
    expect(page.locator("#nn-upload-refused")).to_be_hidden()  # a file without an extension is taken
    expect(page.locator("#nn-upload-file-list li")).to_have_count(3)
    page.click("#nn-upload-start")

    errors = page.locator("#nn-upload-errors")
    expect(errors).to_be_visible()
    expect(errors.locator("p")).to_have_text("2 files failed:")
    expect(errors.locator("li")).to_have_text([f"broken.dcm: {expected['broken.dcm']}",
                                               f"IM000001: {expected['IM000001']}"])
    expect(errors).to_have_css("color", "rgb(138, 16, 16)")
    expect(page.locator("#nn-upload-success")).to_contain_text("1 file, 1 instance stored for patient 1CT1")
    expect(file_row(page, "broken.dcm").locator(".nn-file-status")).to_have_text(f"Failed: {expected['broken.dcm']}")
    # The failed files stay in the list and can be sent again; the stored one is done.
    expect(page.locator("#nn-upload-start")).to_be_enabled()
    session.screenshot("upload-errors.png")
    # The list behind the dialog refreshed by itself.
    expect(page.locator("#nn-studies-body tr[data-study-id]")).to_have_count(1)


def test_a_zip_archive_reports_each_member(pacs, browsing, tmp_path):
    archive = tmp_path / "study.zip"
    archive.write_bytes(make_zip({"CT/CT_small.dcm": read_bytes("CT_small.dcm"),
                                  "MR/MR_small.dcm": read_bytes("MR_small.dcm"), "notes.txt": b"hello"}))
    server_error = requests.post(pacs.url + "/neuronova/upload", data=b"hello",
                                 headers={"Content-Type": "application/dicom"}).json()["error"]
    session = browsing(pacs)
    page = session.page
    page.goto("/neuronova/app/index.html")
    open_dialog(page)
    page.set_input_files("#nn-upload-files", [str(archive)])
    choose_patient(page, "Kim", KIM)
    with page.expect_request(re.compile(r"/neuronova/upload/P-2024-001235$")) as sent:
        page.click("#nn-upload-start")
    assert sent.value.headers["content-type"] == "application/zip"
    expect(page.locator("#nn-upload-success")).to_contain_text(
        "1 file, 2 instances stored for patient P-2024-001235")
    expect(page.locator("#nn-upload-errors li")).to_have_text([f"study.zip: notes.txt: {server_error}"])
    expect(file_row(page, "study.zip").locator(".nn-file-status")).to_have_text("2 stored, 1 failed")
    expect(page.locator("#nn-studies-body tr[data-study-id]")).to_have_count(2)
    assert {s["PatientMainDicomTags"]["PatientID"] for s in pacs.get("/studies?expand").json()} == {"P-2024-001235"}


def test_a_folder_is_taken_file_by_file(pacs, browsing, tmp_path):
    folder = tmp_path / "export"
    (folder / "SERIES1").mkdir(parents=True)
    (folder / "SERIES1" / "IM000001").write_bytes(read_bytes("CT_small.dcm"))
    (folder / "SERIES1" / "IM000002.dcm").write_bytes(read_bytes("MR_small.dcm"))
    (folder / "DICOMDIR").write_bytes(b"index")  # the folder's index, not an image: skipped
    (folder / ".DS_Store").write_bytes(b"junk")  # hidden: skipped
    (folder / "README.txt").write_text("burned by the modality")
    session = browsing(pacs)
    page = session.page
    page.goto("/neuronova/app/index.html")
    open_dialog(page)
    page.set_input_files("#nn-upload-folder", str(folder))
    expect(page.locator("#nn-upload-file-list .nn-file-name")).to_have_text(
        ["export/SERIES1/IM000001", "export/SERIES1/IM000002.dcm"])
    expect(page.locator("#nn-upload-refused-message")).to_have_text(REFUSED)
    expect(page.locator("#nn-upload-refused-names")).to_have_text("Not taken: export/README.txt")
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-success")).to_contain_text("2 files, 2 instances stored")
    assert len(pacs.instances()) == 2


def test_cancel_stops_what_is_not_sent_and_aborts_what_is_in_flight(pacs, browsing, tmp_path):
    paths = []
    for number in range(1, 6):
        path = tmp_path / f"CT_{number}.dcm"
        path.write_bytes(read_bytes("CT_small.dcm"))
        paths.append(str(path))
    session = browsing(pacs)
    page = session.page
    page.goto("/neuronova/app/index.html")
    open_dialog(page)
    page.set_input_files("#nn-upload-files", paths)
    session.throttle_uploads(2 * 1024)
    page.click("#nn-upload-start")
    # Three files at a time: three being sent, two waiting.
    expect(page.locator("#nn-upload-file-list li[data-state='sending']")).to_have_count(3)
    expect(page.locator("#nn-upload-file-list li[data-state='queued']")).to_have_count(2)
    page.click("#nn-upload-cancel")

    expect(page.locator("#nn-upload-file-list li[data-state='cancelled']")).to_have_count(5)
    expect(page.locator("#nn-upload-file-list .nn-file-status", has_text="Cancelled (not sent)")).to_have_count(2)
    expect(page.locator("#nn-upload-notice")).to_contain_text("Upload cancelled: 5 files not uploaded")
    expect(page.locator("#nn-upload-dialog")).to_be_visible()  # Cancel stops first, closes only when idle
    expect(page.locator("#nn-upload-cancel")).to_have_text("Close")
    assert pacs.instances() == []

    # Upload sends the cancelled files again.
    session.throttle_uploads(None)
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-success")).to_contain_text("5 files, 5 instances stored")
    expect(page.locator("#nn-upload-file-list li[data-state='done']")).to_have_count(5)
    assert len(pacs.instances()) == 1  # five copies of one instance


def test_keyboard_only(pacs, browsing, files):
    session = browsing(pacs)
    page = session.page
    page.goto("/neuronova/app/index.html")
    opener = page.locator("#nn-open-upload")
    opener.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#nn-upload-dialog")).to_be_visible()
    expect(page.locator("#nn-upload-choose-files")).to_be_focused()

    page.locator("#nn-upload-patient-search").focus()
    page.keyboard.type("Kim")
    page.keyboard.press("Enter")
    expect(page.locator("#nn-upload-patient option")).to_have_text([NO_PATIENT, KIM])
    page.keyboard.press("ArrowDown")
    expect(page.locator("#nn-upload-patient")).to_be_focused()

    page.keyboard.press("Escape")
    expect(page.locator("#nn-upload-dialog")).to_be_hidden()
    expect(opener).to_be_focused()


def test_with_orthanc_authentication(orthanc_with_login, browsing, files):
    server = orthanc_with_login
    assert requests.get(server.url + "/neuronova/studies", timeout=10).status_code == 401
    assert requests.get(server.url + "/neuronova/app/index.html", timeout=10).status_code == 401

    session = browsing(server, http_credentials={"username": "radiographer", "password": "secret"})
    page = session.page
    page.goto("/neuronova/app/index.html")
    expect(page.locator("#nn-list-status")).to_contain_text("Showing 0 of 0 studies")
    page.evaluate("window.notReloaded = true")

    open_dialog(page)
    page.set_input_files("#nn-upload-files", [files["MR_small.dcm"]])
    choose_patient(page, "Kim", KIM)
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-success")).to_contain_text("1 file, 1 instance stored for patient P-2024-001235")
    page.keyboard.press("Escape")

    # The list refreshed by itself (no reload), showing the new study under the chosen patient.
    row = page.locator("#nn-studies-body tr[data-study-id]")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("Kim^Cheolsu")
    expect(row).to_have_class(re.compile("nn-new"))
    assert page.evaluate("window.notReloaded") is True

    # Orthanc Explorer behind the same login: the dialog loads, and the page shown redraws after an upload.
    page.goto("/app/explorer.html#find-patients")
    patients = page.locator("#all-patients li")
    expect(patients).to_have_count(1)
    open_dialog(page)
    page.set_input_files("#nn-upload-files", [files["CT_small.dcm"]])
    choose_patient(page, "Hong", HONG)
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-success")).to_contain_text("1 file, 1 instance stored for patient P-2024-001234")
    page.keyboard.press("Escape")
    expect(patients).to_have_count(2)
    expect(patients.filter(has_text="Hong^Gildong")).to_have_count(1)



@pytest.fixture(scope="module")
def one_slot(tmp_path_factory):
    """An Orthanc whose plugin runs one request at a time: a second one is answered 503, Retry-After: 1."""
    server = OrthancServer(str(tmp_path_factory.mktemp("one-slot")),
                           {"NeuroNova": {"Requests": {"Concurrent": 1, "RetryAfterSeconds": 1}}}).start()
    yield server
    server.stop()


def ct_copies(count: int) -> bytes:
    """A ZIP of `count` distinct instances (CT_small with new SOP Instance UIDs)."""
    members = {}
    for index in range(count):
        dataset = parse(read_bytes("CT_small.dcm"))
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        out = io.BytesIO()
        dataset.save_as(out, enforce_file_format=True)
        members[f"CT/{index}.dcm"] = out.getvalue()
    return make_zip(members)


class SlotHolder:
    """Another user's ZIP upload holding the server's only slot, again and again, until released."""

    def __init__(self, server):
        self.server, self.archive, self.released = server, ct_copies(200), threading.Event()
        self.thread = threading.Thread(target=self._upload_until_released)

    def _upload_until_released(self):
        while not self.released.is_set():
            requests.post(self.server.url + "/neuronova/upload", data=self.archive,
                          headers={"Content-Type": "application/zip"}, timeout=120)

    def __enter__(self):
        before = self.server.get("/statistics").json()["CountInstances"]
        self.thread.start()
        wait_until(lambda: self.server.get("/statistics").json()["CountInstances"] > before, 60, "the ZIP being stored")
        return self

    def __exit__(self, *exc):
        self.released.set()
        self.thread.join(timeout=120)


def test_a_busy_server_is_waited_for_and_the_file_sent_again(one_slot, browsing, files):
    session = browsing(one_slot)
    page = session.page
    page.goto("/app/explorer.html")
    open_dialog(page)
    page.set_input_files("#nn-upload-files", [files["MR_small.dcm"]])
    answers = []
    page.on("response", lambda response: answers.append((response.status, response.header_value("retry-after")))
            if response.url.endswith("/neuronova/upload") else None)

    # Another user's ZIP holds the only slot, again and again, until the dialog has been told to wait.
    with SlotHolder(one_slot):
        page.click("#nn-upload-start")
        expect(file_row(page, "MR_small.dcm").locator(".nn-file-status")).to_have_text(
            "Server busy: sending again in 1 s")

    expect(page.locator("#nn-upload-success")).to_contain_text("1 file, 1 instance stored", timeout=60000)
    expect(file_row(page, "MR_small.dcm").locator(".nn-file-status")).to_have_text("Stored")
    expect(page.locator("#nn-upload-errors")).to_be_hidden()
    assert answers[0] == (503, "1") and answers[-1][0] == 200, answers
    found = one_slot.post("/tools/lookup", data=str(parse(read_bytes("MR_small.dcm")).SOPInstanceUID)).json()
    assert [item["Type"] for item in found] == ["Instance"]


def test_the_study_list_of_a_busy_server_loads_once_it_may(one_slot, browsing):
    """The 503's Retry-After (1 s here) is when the list asks again, not the 30 s auto-refresh."""
    session = browsing(one_slot)
    page = session.page
    with SlotHolder(one_slot):
        page.goto("/neuronova/app/index.html")
        expect(page.locator("#nn-list-error")).to_contain_text("Could not load the study list: the server is busy")
    expect(page.locator("#nn-list-error")).to_be_hidden(timeout=10000)
    expect(page.locator("#nn-list-status")).to_contain_text("Showing")
