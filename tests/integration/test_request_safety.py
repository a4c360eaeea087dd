"""Requests the plugin refuses before they cost anything: nested JSON, pages of other sites, form
content types, too many at once; and Orthanc keeps answering throughout."""

import subprocess
import threading
import time
from io import BytesIO

import numpy as np
import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from support.dicom_files import read_bytes
from support.servers import OrthancServer



@pytest.mark.parametrize("body", [b"[" * 2048 + b"]" * 2048, b'{"a":' * 1000 + b"1" + b"}" * 1000])
def test_deeply_nested_json_is_refused_and_orthanc_keeps_running(pacs, body):
    answer = pacs.put("/neuronova/patients/T-NEST-1", data=body, headers={"Content-Type": "application/json"})
    assert answer.status_code == 400 and "nested more than" in answer.json()["error"]
    assert pacs.get("/system").status_code == 200


@pytest.mark.parametrize("headers", [
    {"Origin": "http://evil.example", "Content-Type": "application/dicom"},
    {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/dicom"},
    {"Origin": "null", "Content-Type": "application/dicom"},
])
def test_a_page_of_another_site_cannot_upload_or_change_patients(pacs, headers):
    upload = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"), headers=headers)
    assert upload.status_code == 403 and "cross-site" in upload.json()["error"]
    change = pacs.put("/neuronova/patients/T-CSRF-1", data=b'{"name": "Evil^Eve"}',
                      headers={**headers, "Content-Type": "application/json"})
    assert change.status_code == 403
    assert pacs.get("/instances").json() == []
    assert pacs.get("/neuronova/patients/T-CSRF-1").status_code == 404


def test_a_cross_site_form_post_is_refused_by_its_content_type(pacs):
    """What a page of another site can send without a preflight, from a browser too old for Origin."""
    for form_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        answer = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"),
                           headers={"Content-Type": form_type})
        assert answer.status_code == 415, form_type
    assert pacs.get("/instances").json() == []


def test_the_same_origin_may_upload(pacs):
    answer = pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"),
                       headers={"Origin": pacs.url, "Sec-Fetch-Site": "same-origin", "Content-Type": "application/dicom"})
    assert answer.status_code == 200, answer.text



@pytest.fixture(scope="module")
def narrow(tmp_path_factory):
    """An Orthanc with few HTTP threads, so that a handful of clients fills the plugin's slots."""
    server = OrthancServer(str(tmp_path_factory.mktemp("narrow")),
                           {"HttpThreadsCount": 9, "NeuroNova": {"Requests": {"Concurrent": 2}}}).start()
    yield server
    server.stop()


def _big_series(count: int) -> list[bytes]:
    """Multi-frame instances of a few MB each, in one new study: uploads that take a while."""
    dataset = dcmread(get_testdata_file("emri_small.dcm"))  # 64 x 64 x 10 frames, 16-bit
    study, series = generate_uid(), generate_uid()
    files = []
    for _ in range(count):
        dataset.StudyInstanceUID, dataset.SOPInstanceUID = study, generate_uid()
        dataset.SeriesInstanceUID = series
        dataset.NumberOfFrames = 400
        dataset.PixelData = np.random.default_rng(len(files)).integers(0, 4096, 400 * 64 * 64, dtype=np.uint16).tobytes()
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def test_many_concurrent_uploads_get_503_with_retry_after_and_orthanc_keeps_answering(narrow):
    """Each upload stores through Orthanc's REST API, which needs a second HTTP thread: with every
    thread in an upload, Orthanc froze. Beyond the slots a request is answered 503 at once."""
    files = _big_series(24)
    answers, system_delays = [], []

    def upload(data):
        answers.append(requests.post(narrow.url + "/neuronova/upload/P-2024-001234", data=data, timeout=300,
                                     headers={"Content-Type": "application/dicom"}))

    threads = [threading.Thread(target=upload, args=(data,)) for data in files]
    for thread in threads:
        thread.start()
    page_statuses = set()
    while any(thread.is_alive() for thread in threads):
        started = time.monotonic()
        assert requests.get(narrow.url + "/system", timeout=30).status_code == 200
        system_delays.append(time.monotonic() - started)
        # routes that never call Orthanc are not gated: the dashboard and dialog load on a busy server
        for path in ("/neuronova/app/index.html", "/neuronova/app/upload-dialog.js", "/neuronova/ready"):
            page_statuses.add(requests.get(narrow.url + path, timeout=30).status_code)
        time.sleep(0.2)
    for thread in threads:
        thread.join()
    statuses = sorted(answer.status_code for answer in answers)
    assert set(statuses) <= {200, 503}, statuses
    busy = [answer for answer in answers if answer.status_code == 503]
    assert busy, "24 concurrent uploads with 2 slots: some must have been answered 503"
    for answer in busy:
        assert answer.headers["Retry-After"] == "2" and "busy" in answer.json()["error"]
    stored = [answer.json()["orthanc_response"]["ID"] for answer in answers if answer.status_code == 200]
    assert sorted(narrow.instances()) == sorted(stored)
    assert max(system_delays) < 10, system_delays  # not a timing benchmark: a frozen Orthanc takes minutes
    assert page_statuses == {200}, page_statuses


def test_refused_uploads_succeed_when_sent_again(narrow):
    files = _big_series(6)
    pending = list(files)
    for _ in range(60):
        if not pending:
            break
        data = pending.pop(0)
        answer = requests.post(narrow.url + "/neuronova/upload/P-2024-001234", data=data, timeout=300,
                               headers={"Content-Type": "application/dicom"})
        if answer.status_code == 503:
            pending.append(data)
            time.sleep(int(answer.headers["Retry-After"]))
        else:
            assert answer.status_code == 200, answer.text
    assert not pending


@pytest.fixture
def small_disk(tmp_path):
    """An Orthanc whose storage area is a 6 MB tmpfs (its index elsewhere): a disk that fills up."""
    storage = tmp_path / "storage"
    storage.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(storage)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a tmpfs cannot be mounted here (needs root): {mounted.stderr.decode().strip()}")
    server = OrthancServer(str(tmp_path))
    server.config["IndexDirectory"] = str(tmp_path / "index")
    try:
        yield server.start()
    finally:
        server.stop()
        subprocess.run(["umount", "-l", str(storage)], check=False)


def test_a_full_disk_is_507_naming_the_disk_not_the_file(small_disk):
    files, answers = _big_series(12), []
    for data in files:  # 3.3 MB each (compressed to about 1.5): the disk is full after a few
        answers.append(small_disk.post("/neuronova/upload/P-2024-001234", data=data,
                                       headers={"Content-Type": "application/dicom"}))
        if answers[-1].status_code != 200:
            break
    full = answers[-1]
    assert full.status_code == 507, full.text
    assert "disk is full" in full.json()["error"] and "nothing is wrong with it" in full.json()["error"]
    assert small_disk.get("/system").status_code == 200
    stored = [answer.json()["orthanc_response"]["ID"] for answer in answers if answer.status_code == 200]
    assert stored and sorted(small_disk.instances()) == sorted(stored)
    sent = {dcmread(BytesIO(data)).SOPInstanceUID: dcmread(BytesIO(data)).PixelData for data in files}
    for instance in stored:  # what was acknowledged reads back whole (under the EMR patient)
        back = dcmread(BytesIO(small_disk.get(f"/instances/{instance}/file").content))
        assert back.PatientID == "P-2024-001234" and back.PixelData == sent[back.SOPInstanceUID]


def _resident_mib(server) -> float:
    with open(f"/proc/{server.process.pid}/status", encoding="ascii") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1]) / 1024


def test_request_bodies_are_given_back_after_the_request(pacs):
    """orthanc-python 4.0 keeps every REST callback's body alive (one reference too many): 300 MB of
    resident memory per 300 MB request, on any plugin route. The plugin gives that reference back."""
    body = bytes(150 * 1024 * 1024)
    idle = _resident_mib(pacs)
    for uri in ("/neuronova/patients/T-BIG-1", "/neuronova/upload/P-2024-001234", "/neuronova/upload/P-2024-001234"):
        if "patients" in uri:
            answer = pacs.put(uri, data=body, headers={"Content-Type": "application/json"})
        else:
            answer = pacs.post(uri, data=body, headers={"Content-Type": "application/dicom"})
        assert answer.status_code == 400, answer.text
    time.sleep(1)
    assert _resident_mib(pacs) - idle < 150, "the bodies of three 150 MB requests are still held"
    assert pacs.post("/neuronova/upload/P-2024-001234", data=read_bytes("CT_small.dcm"),
                     headers={"Content-Type": "application/dicom"}).status_code == 200
