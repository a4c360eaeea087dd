"""The storage area survives what a PACS lives through: Orthanc killed (SIGKILL) while instances
arrive or while the background work compresses them, a storage folder written by Orthanc without
the plugin (adopted, compressed by a resumable job), and the way back to Orthanc without the plugin.

Real Orthanc processes on one data folder, restarted on it; real files from pydicom-data with fresh
UIDs. Throughout, what Orthanc answers for an instance is the very bytes it was sent, and no file of
the storage folder is half-written: a file is whole under its final name, or only a *.tmp leftover
that nothing references.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from io import BytesIO

import pydicom
import pytest
import requests

from neuronova.storage import container
from support.servers import REPO_ROOT, PLUGIN_DIR, OrthancServer, wait_until
from support.storage_files import attachment_path, fresh_copies, read_file, received_bytes, scan_storage, sop_of

# Reconciliation rewrites patient tags; these tests are about the bytes, so Orthanc keeps what it is sent.
KEEP_AS_SENT = {"Reconciliation": {"Enabled": False}}
# Orthanc 1.10 keeps recently written attachments in a memory cache: every read goes to the disk here.
NO_CACHE = {"MaximumStorageCacheSize": 0}


def plugin_config(when: str = "ingest", max_per_second: int = 0, threads: int = 1) -> dict:
    return {**NO_CACHE, "NeuroNova": {**KEEP_AS_SENT, "Transcoding": {
        "When": when, "Background": {"Threads": threads, "MaxFilesPerSecond": max_per_second}}}}


@pytest.fixture
def servers():
    """Starts OrthancServer objects and stops (or has already killed) every one of them afterwards."""
    started: list[OrthancServer] = []

    def start(server: OrthancServer) -> OrthancServer:
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


def kill(server: OrthancServer) -> None:
    """SIGKILL this test's own Orthanc process: no shutdown of any kind, as a power cut would."""
    server.process.kill()
    server.process.wait(timeout=30)
    server.stop()  # closes the log file; the process is already gone


def storage_root(server: OrthancServer) -> str:
    return server.config["StorageDirectory"]


def storage_status(server: OrthancServer) -> dict:
    answer = server.get("/neuronova/storage")
    assert answer.status_code == 200, answer.text
    return answer.json()


def job_status(server: OrthancServer) -> dict:
    answer = server.get("/neuronova/storage/compress")
    assert answer.status_code == 200, answer.text
    return answer.json()["job"]


def attachment_uuid(server: OrthancServer, instance: str) -> str:
    answer = server.get(f"/instances/{instance}/attachments/dicom/info")
    assert answer.status_code == 200, answer.text
    return answer.json()["Uuid"]


def post_all(server: OrthancServer, files: list[tuple[str, bytes]]) -> dict[str, str]:
    """POST every file; SOP Instance UID -> Orthanc instance id."""
    session, ids = requests.Session(), {}
    for sop, data in files:
        answer = session.post(server.url + "/instances", data=data, timeout=60)
        assert answer.status_code == 200 and answer.json()["Status"] == "Success", answer.text
        ids[sop] = answer.json()["ID"]
    return ids


def assert_every_instance_reads_exact(server: OrthancServer, sent: dict[str, bytes], count: int | None = None,
                                      verify_md5: bool = True) -> list[str]:
    """Every instance Orthanc lists reads back exactly the bytes of the file sent with its SOP
    Instance UID, and Orthanc's own MD5 check of the attachment passes. Returns the instance ids."""
    instances = server.instances()
    if count is not None:
        assert len(instances) == count
    session = requests.Session()
    for instance in instances:
        answer = session.get(f"{server.url}/instances/{instance}/file", timeout=60)
        assert answer.status_code == 200, answer.text
        sop = sop_of(answer.content)
        assert sop in sent, f"instance {instance}: SOP Instance {sop} was never sent"
        assert answer.content == sent[sop], f"instance {instance} does not read back the bytes it was sent"
        if verify_md5:
            check = session.post(f"{server.url}/instances/{instance}/attachments/dicom/verify-md5", timeout=60)
            assert check.status_code == 200, f"instance {instance}: verify-md5 answers {check.status_code} {check.text}"
    return instances


def assert_no_file_half_written(server: OrthancServer, sent: dict[str, bytes],
                                same_dataset: dict[str, bytes] | None = None) -> None:
    """Every attachment file under its final name is whole: a container restores (size and CRC-32
    checked), a plain file is complete; every DICOM file holds one of the sent files (`sent`: byte for
    byte; `same_dataset`: C-STORE, whose file meta Orthanc writes itself: the same dataset). The *.tmp
    files a crash leaves are not what any instance references."""
    root = storage_root(server)
    scan = scan_storage(root)
    for uuid, path in scan.attachments.items():
        stored = read_file(path)
        try:
            received = received_bytes(stored)
        except container.ContainerError as error:
            pytest.fail(f"{path}: a container that does not restore: {error}")
        if received[128:132] != b"DICM":
            continue  # a non-DICOM attachment Orthanc keeps (none expected, but not ours to judge)
        dataset = pydicom.dcmread(BytesIO(received))
        sop = str(dataset.SOPInstanceUID)
        if "PixelData" not in dataset:  # Orthanc's "dicom-until-pixel-data": the header of the file
            assert sop in sent or (same_dataset and sop in same_dataset), f"{path}: {sop} was never sent"
            if sop in sent:
                assert sent[sop].startswith(received), f"{path}: not the header of the file sent for {sop}"
            continue
        assert len(dataset.PixelData) == dataset.Rows * dataset.Columns * dataset.BitsAllocated // 8, path
        if sop in sent:
            assert received == sent[sop], f"{path}: not the bytes sent for {sop}"
        else:
            assert same_dataset is not None and sop in same_dataset, f"{path}: SOP Instance {sop} was never sent"
            assert_same_dataset(received, same_dataset[sop])
    referenced = {attachment_uuid(server, instance) for instance in server.instances()}
    assert referenced <= set(scan.attachments), "an instance references a file missing under its final name"
    assert not {os.path.basename(path) for path in scan.temporaries} & referenced
    assert scan.others == []


def assert_same_dataset(stored: bytes, sent: bytes) -> None:
    """C-STORE: Orthanc writes its own file meta; the dataset itself is what storescu sent."""
    received, original = pydicom.dcmread(BytesIO(stored)), pydicom.dcmread(BytesIO(sent))
    assert received.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
    assert received.PixelData == original.PixelData
    assert {element.tag for element in received} == {element.tag for element in original}
    assert all(received[element.tag].value == element.value for element in original)


def disk_states(server: OrthancServer) -> tuple[int, int]:
    """(containers, plain DICOM files) among the attachment files on disk. Orthanc also keeps a
    "dicom-until-pixel-data" attachment (the header of the file) for a storage area without range
    reads: neither (its own attachment, stored as Orthanc gives it)."""
    containers = plain = 0
    for path in scan_storage(storage_root(server)).attachments.values():
        stored = read_file(path)
        if container.is_container(stored):
            containers += 1
        elif has_pixel_data(stored):
            plain += 1
    return containers, plain


def has_pixel_data(stored: bytes) -> bool:
    try:
        return "PixelData" in pydicom.dcmread(BytesIO(stored))
    except Exception:
        return False


# ---------------------------------------------------------------------------
# 1. SIGKILL while instances arrive


def _storescu_acknowledged(output: str) -> list[str]:
    """The files storescu -v was told were stored: each 'Sending file' line followed by a success."""
    acknowledged, current = [], None
    for line in output.splitlines():
        sending = re.search(r"Sending file: (.+)$", line)
        if sending:
            current = sending.group(1).strip()
        elif "Received Store Response" in line and "Success" in line and current:
            acknowledged.append(current)
            current = None
    return acknowledged


def test_sigkill_during_ingest_loses_no_acknowledged_instance_and_leaves_no_half_file(servers, tmp_path):
    data_dir = str(tmp_path / "orthanc")
    config = plugin_config("ingest")
    server = servers(OrthancServer(data_dir, config))
    rest = fresh_copies(400, ("CT_small.dcm", "MR_small.dcm", "CT_small.dcm", "693_UNCR.dcm"))
    dimse_paths, dimse = [], {}
    for index, (sop, data) in enumerate(fresh_copies(60, ("693_UNCR.dcm",))):
        path = str(tmp_path / f"scu-{index:03d}.dcm")
        with open(path, "wb") as out:
            out.write(data)
        dimse_paths.append(path)
        dimse[sop] = data
    sent = dict(rest)
    acknowledged: dict[str, str] = {}  # SOP Instance UID -> Orthanc id, for every POST answered 200
    refused: list[str] = []
    lock = threading.Lock()

    def rest_client(files):
        session = requests.Session()
        for sop, data in files:
            try:
                answer = session.post(server.url + "/instances", data=data, timeout=30)
            except requests.RequestException:
                return  # the server is gone: this instance is unacknowledged
            if answer.status_code == 200:
                with lock:
                    acknowledged[sop] = answer.json()["ID"]
            elif server.process.poll() is None:
                refused.append(f"HTTP {answer.status_code}: {answer.text[:200]}")

    scu_output: list[str] = []

    def dimse_client():
        done = subprocess.run(["storescu", "-v", "-aet", "TESTSCU", "-aec", server.aet, "127.0.0.1",
                               str(server.dicom_port), *dimse_paths], capture_output=True, text=True, timeout=120)
        scu_output.append(done.stdout + done.stderr)

    clients = [threading.Thread(target=rest_client, args=(rest[index::4],)) for index in range(4)]
    clients.append(threading.Thread(target=dimse_client))
    for client in clients:
        client.start()
    wait_until(lambda: len(acknowledged) >= 120, 60, "120 acknowledged POSTs", interval=0.01)
    kill(server)
    for client in clients:
        client.join(timeout=120)
    assert not any(client.is_alive() for client in clients)
    assert refused == []
    assert len(acknowledged) < len(rest), "every POST answered before the kill: the test killed nothing mid-way"
    scu_acknowledged = [pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
                        for path in _storescu_acknowledged(scu_output[0])]
    print(f"killed after {len(acknowledged)} of {len(rest)} POSTs and {len(scu_acknowledged)} of {len(dimse)} "
          f"C-STOREs acknowledged")

    restarted = servers(OrthancServer(data_dir, config))
    for sop, instance in acknowledged.items():
        answer = restarted.get(f"/instances/{instance}/file")
        assert answer.status_code == 200, f"acknowledged instance {sop} lost by the kill"
        assert answer.content == sent[sop]
    for sop in scu_acknowledged:
        assert len(restarted.post("/tools/lookup", data=sop).json()) == 1, f"C-STORE of {sop} acknowledged, then lost"
    # Every instance Orthanc lists: the bytes of one sent file (C-STORE: Orthanc's own file meta)
    session = requests.Session()
    instances = restarted.instances()
    assert len(instances) >= len(acknowledged) + len(scu_acknowledged)
    for instance in instances:
        data = session.get(f"{restarted.url}/instances/{instance}/file", timeout=60).content
        sop = sop_of(data)
        if sop in sent:
            assert data == sent[sop]
        else:
            assert sop in dimse, f"instance {instance}: SOP Instance {sop} was never sent"
            assert_same_dataset(data, dimse[sop])
        check = session.post(f"{restarted.url}/instances/{instance}/attachments/dicom/verify-md5", timeout=60)
        assert check.status_code == 200, check.text
    assert_no_file_half_written(restarted, sent, dimse)
    containers, plain = disk_states(restarted)
    assert containers >= len(instances) and plain == 0  # ingest mode: every file compressed before it lands
    # Every stored instance has its history row (those the kill cut off are "recovered" at the start),
    # and no row names an instance that is not stored.
    stored_sops = {sop_of(session.get(f"{restarted.url}/instances/{instance}/file", timeout=60).content)
                   for instance in instances}
    wait_until(lambda: restarted.get("/neuronova/history", params={"limit": 1000}).json()["count"] >= len(instances),
               30, "a history row for every stored instance", interval=0.3)
    rows = restarted.get("/neuronova/history", params={"limit": 1000}).json()["entries"]
    assert {row["sop_instance_uid"] for row in rows} == stored_sops
    recovered = [row for row in rows if row["action"] == "recovered"]
    print(f"{len(recovered)} history rows recovered at the restart")
    # Orthanc still takes instances on the storage it came back to
    late = fresh_copies(3, ("CT_small.dcm",))
    post_all(restarted, late)
    assert len(restarted.instances()) == len(instances) + 3


# ---------------------------------------------------------------------------
# 2. Transcoding.When "background"


def test_background_mode_stores_as_received_then_compresses_with_exact_reads_throughout(servers, tmp_path):
    server = servers(OrthancServer(str(tmp_path / "orthanc"), plugin_config("background", max_per_second=10)))
    files = fresh_copies(30, ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm"))
    sent = dict(files)
    ids = post_all(server, files)

    status = storage_status(server)
    assert status["when"] == "background"
    assert status["pending"] > 0 and status["files"] == len(files), status
    containers, plain = disk_states(server)
    assert plain > 0  # stored as received first ...
    for sop, instance in ids.items():  # ... and a plain file is the received bytes, not a copy of them
        stored = read_file(attachment_path(storage_root(server), attachment_uuid(server, instance)))
        assert stored == sent[sop] or container.is_container(stored)

    reads = 0
    deadline = time.monotonic() + 45
    while storage_status(server)["pending"] > 0:  # reads while the workers replace files
        assert time.monotonic() < deadline, f"background work stuck: {storage_status(server)}"
        sop, instance = list(ids.items())[reads % len(ids)]
        assert server.get(f"/instances/{instance}/file").content == sent[sop]
        reads += 1
    status = storage_status(server)
    assert status["compressed_files"] == len(files) and status["plain_files"] == 0, status
    assert status["stored_bytes"] < status["received_bytes"]
    assert disk_states(server) == (len(files), 0)
    assert_every_instance_reads_exact(server, sent, count=len(files))
    assert_no_file_half_written(server, sent)

    entries = server.get("/neuronova/history", params={"limit": 1000}).json()["entries"]
    assert len(entries) == len(files)
    for entry in entries:
        stored = os.path.getsize(attachment_path(storage_root(server), entry["attachment"]))
        assert entry["bytes_before"] == len(sent[entry["sop_instance_uid"]])
        assert entry["bytes_after"] == stored < entry["bytes_before"], entry
        assert entry["syntax_after"] == "1.2.840.10008.1.2.4.201", entry


def test_background_history_learns_the_compressed_size_of_every_instance(servers, tmp_path):
    """Unthrottled workers often compress a small file before Orthanc's stored-instance callback has
    written the instance's history row: the row must still end up with the size on disk."""
    server = servers(OrthancServer(str(tmp_path / "orthanc"), plugin_config("background", threads=2)))
    files = fresh_copies(60, ("MR_small.dcm",))
    post_all(server, files)
    wait_until(lambda: storage_status(server)["pending"] == 0, 30, "the background work")
    assert storage_status(server)["compressed_files"] == len(files)
    entries = server.get("/neuronova/history", params={"limit": 1000}).json()["entries"]
    assert len(entries) == len(files)
    stale = [entry["sop_instance_uid"] for entry in entries
             if entry["bytes_after"] != os.path.getsize(attachment_path(storage_root(server), entry["attachment"]))]
    assert stale == [], f"{len(stale)} of {len(entries)} history rows keep the received size"


def test_background_mode_gives_back_a_received_file_that_looks_like_a_container(servers, tmp_path):
    """A file copied out of a storage area (a container) and sent again: it is not written as it
    is, where a read would restore it to other bytes; a custom attachment alike."""
    copied_out = container.pack(fresh_copies(1, ("CT_small.dcm",))[0][1],
                                container.PackSettings(target="j2k")).data  # J2K: Orthanc keeps it as it is
    assert container.is_container(copied_out)
    data_dir = str(tmp_path / "orthanc")
    config = plugin_config("background")
    server = servers(OrthancServer(data_dir, config))
    instance = post_all(server, [(sop_of(copied_out), copied_out)])[sop_of(copied_out)]
    assert server.put(f"/instances/{instance}/attachments/1025", data=copied_out).status_code == 200
    wait_until(lambda: storage_status(server)["pending"] == 0, 30, "the background work")
    server.stop()
    restarted = servers(OrthancServer(data_dir, config))
    assert restarted.get(f"/instances/{instance}/file").content == copied_out
    assert restarted.post(f"/instances/{instance}/attachments/dicom/verify-md5").status_code == 200
    assert restarted.get(f"/instances/{instance}/attachments/1025/data").content == copied_out


# ---------------------------------------------------------------------------
# 3. SIGKILL during the background compression


def test_sigkill_during_background_compression_resumes_from_the_ledger(servers, tmp_path):
    data_dir = str(tmp_path / "orthanc")
    config = plugin_config("background", max_per_second=15, threads=2)
    server = servers(OrthancServer(data_dir, config))
    files = fresh_copies(80, ("CT_small.dcm", "693_UNCR.dcm"))
    sent = dict(files)
    post_all(server, files)
    wait_until(lambda: storage_status(server)["compressed_files"] >= 10, 30, "some files compressed")
    before_kill = storage_status(server)
    assert before_kill["pending"] > 0, "everything compressed before the kill: nothing to resume"
    kill(server)
    containers, plain = disk_states(server)
    assert containers > 0 and plain > 0, (containers, plain)

    restarted = servers(OrthancServer(data_dir, config))
    assert_every_instance_reads_exact(restarted, sent, count=len(files), verify_md5=False)  # mid-resume
    wait_until(lambda: storage_status(restarted)["pending"] == 0, 45, "the resumed background work")
    status = storage_status(restarted)
    assert status["compressed_files"] == len(files) and status["files"] == len(files), status
    assert disk_states(restarted) == (len(files), 0)
    assert_every_instance_reads_exact(restarted, sent, count=len(files))
    assert_no_file_half_written(restarted, sent)


# ---------------------------------------------------------------------------
# 4. Adoption of a storage written by Orthanc without the plugin


def store_without_plugin(servers, data_dir: str, files: list[tuple[str, bytes]]) -> None:
    plain_orthanc = servers(OrthancServer(data_dir, NO_CACHE, plugin=False))
    post_all(plain_orthanc, files)
    assert_every_instance_reads_exact(plain_orthanc, dict(files), count=len(files))
    plain_orthanc.stop()


def wait_for_job(server: OrthancServer, timeout: float) -> dict:
    def finished():
        job = job_status(server)
        assert job["state"] != "failed", job
        return job if job["state"] == "done" else None
    return wait_until(finished, timeout, "the compression of the existing storage", interval=0.2)


def adopt(servers, data_dir: str, files: list[tuple[str, bytes]]) -> OrthancServer:
    """Orthanc without the plugin stores `files`; Orthanc with the plugin adopts the folder and compresses it."""
    sent = dict(files)
    store_without_plugin(servers, data_dir, files)
    server = servers(OrthancServer(data_dir, plugin_config("ingest", max_per_second=20)))
    assert disk_states(server) == (0, len(files))
    assert_every_instance_reads_exact(server, sent, count=len(files))  # plain files are read unchanged
    assert job_status(server)["state"] == "idle"

    first = server.post("/neuronova/storage/compress")
    assert first.status_code == 202 and first.json()["started"] is True, first.text
    second = server.post("/neuronova/storage/compress")  # 20 files a second: still running
    assert second.status_code == 200 and second.json()["started"] is False, second.text
    assert second.json()["job"]["state"] in ("counting", "running")

    job = wait_for_job(server, 45)
    assert job["compressed"] == len(files) and job["failed"] == 0 and job["total"] == len(files), job
    assert disk_states(server) == (len(files), 0)
    assert_every_instance_reads_exact(server, sent, count=len(files))
    assert_no_file_half_written(server, sent)
    status = storage_status(server)
    assert status["compressed_files"] == len(files) and status["stored_bytes"] < status["received_bytes"], status
    return server


def test_existing_storage_is_adopted_then_compressed_by_the_job(servers, tmp_path):
    adopt(servers, str(tmp_path / "orthanc"), fresh_copies(30, ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm")))


def test_the_adoption_job_killed_midway_resumes_by_itself_after_a_restart(servers, tmp_path):
    data_dir = str(tmp_path / "orthanc")
    files = fresh_copies(60, ("CT_small.dcm", "693_UNCR.dcm"))
    sent = dict(files)
    store_without_plugin(servers, data_dir, files)
    config = plugin_config("ingest", max_per_second=10)
    server = servers(OrthancServer(data_dir, config))
    assert server.post("/neuronova/storage/compress").status_code == 202
    wait_until(lambda: job_status(server)["compressed"] >= 8, 30, "the job under way")
    assert job_status(server)["state"] == "running"
    kill(server)
    containers, plain = disk_states(server)
    assert containers >= 8 and plain > 0, (containers, plain)

    restarted = servers(OrthancServer(data_dir, config))  # nobody asks again: the ledger says "running"
    assert job_status(restarted)["state"] in ("counting", "running", "done")
    job = wait_for_job(restarted, 45)
    assert job["total"] == len(files) and job["failed"] == 0, job
    assert job["compressed"] + job["already"] == len(files), job
    assert 0 < job["compressed"] < len(files), job  # the restart did not start over
    assert disk_states(restarted) == (len(files), 0)
    assert_every_instance_reads_exact(restarted, sent, count=len(files))
    assert_no_file_half_written(restarted, sent)
    restarted.stop()
    again = servers(OrthancServer(data_dir, config))  # done stays done
    time.sleep(1)
    assert job_status(again)["state"] == "idle"


# ---------------------------------------------------------------------------
# 5. The way back to Orthanc without the plugin


def test_the_way_back_gives_orthanc_without_the_plugin_the_received_bytes(servers, tmp_path):
    data_dir = str(tmp_path / "orthanc")
    adopted = fresh_copies(20, ("CT_small.dcm", "MR_small.dcm", "693_UNCR.dcm"))
    server = adopt(servers, data_dir, adopted)
    ingested = fresh_copies(10, ("CT_small.dcm", "693_UNCR.dcm"))  # and some written by the plugin itself
    post_all(server, ingested)
    sent = {**dict(adopted), **dict(ingested)}
    assert disk_states(server) == (len(sent), 0)
    root = storage_root(server)
    server.stop()
    attachments = len(scan_storage(root).attachments)  # with Orthanc's dicom-until-pixel-data of the 10

    way_back = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "python"), "-m", "neuronova.storage.plain",
                               root], cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=PLUGIN_DIR),
                              capture_output=True, text=True, timeout=120)
    assert way_back.returncode == 0, way_back.stdout + way_back.stderr
    assert f"{attachments} files, {len(sent)} restored" in way_back.stdout, way_back.stdout
    assert not os.path.exists(os.path.join(root, "neuronova", "storage.sqlite"))

    plain_orthanc = servers(OrthancServer(data_dir, NO_CACHE, plugin=False))
    assert disk_states(plain_orthanc) == (0, len(sent))
    scan = scan_storage(root)
    assert scan.temporaries == []
    assert_every_instance_reads_exact(plain_orthanc, sent, count=len(sent))
    for instance in plain_orthanc.instances():  # the plain files are Orthanc's own files again, byte for byte
        stored = read_file(attachment_path(root, attachment_uuid(plain_orthanc, instance)))
        assert stored == plain_orthanc.get(f"/instances/{instance}/file").content
    # A second run finds nothing to restore
    again = subprocess.run([os.path.join(REPO_ROOT, ".venv", "bin", "python"), "-m", "neuronova.storage.plain", root],
                           cwd=REPO_ROOT, env=dict(os.environ, PYTHONPATH=PLUGIN_DIR),
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and f"{attachments} files, 0 restored" in again.stdout, again.stdout
