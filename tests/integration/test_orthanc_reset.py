"""POST /tools/reset (Orthanc's restart, reloading its configuration) brings Orthanc back with the
plugin working. Orthanc restarts inside its process, re-initializing the Python plugin, and numpy
cannot be loaded twice in one process: Orthanc stopped for good before the plugin took the route."""

import time

import pytest

from support.dicom_files import parse, read_bytes
from support.servers import OrthancServer, wait_until


@pytest.fixture
def server(tmp_path):
    orthanc = OrthancServer(str(tmp_path)).start()
    yield orthanc
    orthanc.stop()


def _answers(server, uri):
    try:
        return server.get(uri).status_code == 200
    except OSError:
        return False


def test_reset_brings_orthanc_back_with_the_plugin_and_everything_stored(server):
    stored = server.post("/instances", data=read_bytes("CT_small.dcm")).json()["ID"]
    before = server.get(f"/instances/{stored}/file").content
    pid = server.process.pid
    answer = server.post("/tools/reset")
    assert (answer.status_code, answer.text) == (200, "{}")  # Orthanc's own answer
    wait_until(lambda: server.log_text().count("Orthanc has started") == 2, 60, "Orthanc restarted", interval=0.2)
    wait_until(lambda: _answers(server, "/neuronova/ready"), 60, "the plugin after the reset", interval=0.2)
    assert server.process.poll() is None and server.process.pid == pid  # the same process, a new image
    assert server.get(f"/instances/{stored}/file").content == before
    history = server.get("/neuronova/history").json()["entries"]
    assert [entry["sop_instance_uid"] for entry in history] == [parse(before).SOPInstanceUID]
    again = server.post("/neuronova/upload/P-2024-001234", data=read_bytes("MR_small.dcm"),
                        headers={"Content-Type": "application/dicom"})
    assert again.status_code == 200, again.text
    assert server.get("/neuronova/storage").json()["compressed_files"] == 2


def test_reset_answers_405_to_other_methods_as_orthanc_does(server):
    assert server.get("/tools/reset").status_code == 405


def test_a_page_of_another_site_cannot_restart_orthanc(server):
    answer = server.post("/tools/reset", headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert answer.status_code == 403
    time.sleep(2)  # an accepted reset restarts within half a second
    assert server.log_text().count("Orthanc has started") == 1
