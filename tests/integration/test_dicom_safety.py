"""The shipped configuration for DICOM: the port listens on every interface (Orthanc has no bind
address), so only the modalities listed in DicomModalities may store, their IP address checked."""

import json
import os

import pytest

from support.dicom_files import make_series
from support.dicom_net import storescu
from support.servers import REPO_ROOT, OrthancServer


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    with open(os.path.join(REPO_ROOT, "orthanc.json"), encoding="utf-8") as config_file:
        shipped_store_rule = json.load(config_file)["DicomAlwaysAllowStore"]
    server = OrthancServer(str(tmp_path_factory.mktemp("shipped")), {"DicomAlwaysAllowStore": shipped_store_rule})
    yield server.start()
    server.stop()


def test_an_unlisted_sender_cannot_store(shipped, tmp_path):
    sent = storescu(shipped.dicom_port, make_series(tmp_path, 1, PatientID="LOCAL-1"), calling_aet="ANYONE")
    assert sent.returncode != 0
    # Orthanc 1.10 accepts the association and aborts it at the store; a refused association is as good
    assert any(text in sent.stderr for text in ("Store Failed", "Association Rejected", "Association Request Failed")), \
        sent.stderr
    assert shipped.instances() == []


def test_the_listed_local_sender_can_store(shipped, tmp_path):
    sent = storescu(shipped.dicom_port, make_series(tmp_path, 1, PatientID="LOCAL-1"), calling_aet="STORESCU")
    assert sent.returncode == 0, sent.stderr
    assert len(shipped.instances()) == 1
