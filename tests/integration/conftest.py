"""Integration fixtures: a real Orthanc with the plugin, started once per module on free ports."""

import pytest

from support.servers import OrthancServer


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    server = OrthancServer(str(tmp_path_factory.mktemp("orthanc"))).start()
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc):
    """The module's Orthanc, emptied before the test."""
    orthanc.clear()
    yield orthanc
    assert orthanc.alive(), "Orthanc stopped answering during the test"
