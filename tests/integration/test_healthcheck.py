"""docker/healthcheck.py (the image's HEALTHCHECK) against a real Orthanc with the plugin and authentication."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support.servers import REPO_ROOT, OrthancWithLogin, free_port

SCRIPT = os.path.join(REPO_ROOT, "docker", "healthcheck.py")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    orthanc = OrthancWithLogin(str(tmp_path_factory.mktemp("healthcheck"))).start()
    yield orthanc
    orthanc.stop()


def check(url: str, user: str, password: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, NEURONOVA_READY_URL=url, ORTHANC_USER=user, ORTHANC_PASSWORD=password)
    return subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True, text=True, timeout=30)


def test_healthy_once_the_plugin_is_ready(server):
    result = check(server.url + "/neuronova/ready", *server.USER)
    assert result.returncode == 0, result.stderr


def test_unhealthy_with_the_wrong_credentials(server):
    result = check(server.url + "/neuronova/ready", server.USER[0], "not-the-password")
    assert result.returncode == 1 and "HTTP 401" in result.stderr


def test_unhealthy_when_orthanc_lacks_the_plugin_route(server):
    result = check(server.url + "/neuronova/no-such-route", *server.USER)
    assert result.returncode == 1 and "HTTP 404" in result.stderr


def test_unhealthy_when_nothing_answers():
    result = check(f"http://127.0.0.1:{free_port()}/neuronova/ready", "admin", "change-me")
    assert result.returncode == 1 and "not ready" in result.stderr
