import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(TESTS_DIR), "plugin"))
sys.path.insert(0, TESTS_DIR)


import pytest  # noqa: E402

from support.servers import OrthancServer  # noqa: E402


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory):
    """A real Orthanc with the plugin, started once per module on free ports."""
    server = OrthancServer(str(tmp_path_factory.mktemp("orthanc"))).start()
    yield server
    server.stop()


@pytest.fixture
def pacs(orthanc):
    """The module's Orthanc, emptied before the test."""
    orthanc.clear()
    yield orthanc
    assert orthanc.alive(), "Orthanc stopped answering during the test"
