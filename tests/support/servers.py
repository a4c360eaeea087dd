"""Real servers for the tests: Orthanc with the plugin, on free ports with a temporary storage folder."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time

import requests

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO_ROOT, "scripts"))
from runtime_config import build_config  # noqa: E402

PLUGIN_DIR = os.path.join(REPO_ROOT, "plugin")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class OrthancServer:
    """One Orthanc process started from the project's orthanc.json plus per-test overrides."""

    AUTH: tuple[str, str] | None = None

    def __init__(self, data_dir: str, overrides: dict | None = None, plugin: bool = True, aet: str = "NEURONOVA",
                 extra_pythonpath: tuple[str, ...] = (), verbose: bool = True):
        self.data_dir = data_dir
        self.plugin = plugin
        self.verbose = verbose  # False: no --verbose (per-instance log lines would skew a benchmark)
        self.extra_pythonpath = extra_pythonpath
        self.http_port, self.dicom_port = free_port(), free_port()
        self.aet = aet
        with open(os.path.join(REPO_ROOT, "orthanc.json"), encoding="utf-8") as base_file:
            base = json.load(base_file)
        if not plugin:
            base["Plugins"] = [p for p in base["Plugins"] if "Python" not in p]
            base.pop("PythonScript")
            base.pop("NeuroNova")
        # The shipped configuration accepts C-STORE only from the modalities it lists (DicomModalities,
        # host checked); the tests send from many AE titles: test_dicom_safety checks the shipped rule.
        self.config = build_config(base, self.http_port, self.dicom_port, data_dir,
                                   {"DicomAet": aet, "DicomAlwaysAllowStore": True, **(overrides or {})})
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.log_path = os.path.join(data_dir, "orthanc.log")
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "OrthancServer":
        """Start Orthanc; when another process took one of its free ports meanwhile (tests run side by
        side on this machine), it starts again on new ones."""
        for _ in range(2):
            logged_before = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            try:
                return self._start(timeout)
            except RuntimeError:
                with open(self.log_path, encoding="utf-8", errors="replace") as log_file:
                    log_file.seek(logged_before)
                    if "already in use" not in log_file.read():
                        raise
            self.http_port, self.dicom_port = free_port(), free_port()
            self.config.update(HttpPort=self.http_port, DicomPort=self.dicom_port)
            self.url = f"http://127.0.0.1:{self.http_port}"
        return self._start(timeout)

    def _start(self, timeout: float) -> "OrthancServer":
        os.makedirs(self.data_dir, exist_ok=True)
        config_path = os.path.join(self.data_dir, "orthanc.json")
        with open(config_path, "w", encoding="utf-8") as config_file:
            json.dump(self.config, config_file, ensure_ascii=False)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [*self.extra_pythonpath, PLUGIN_DIR, sysconfig.get_paths()["purelib"]]))
        self._log = open(self.log_path, "ab")
        command = ["Orthanc", "--verbose", config_path] if self.verbose else ["Orthanc", config_path]
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        try:
            wait_until(self._answers, timeout, f"Orthanc on port {self.http_port}")
            if self.plugin:  # the plugin decides instances once it has read the stored studies' patients
                wait_until(self._ready, timeout, f"the plugin's readiness on port {self.http_port}")
        except TimeoutError:
            self.stop()
            raise RuntimeError(f"Orthanc did not start; log tail:\n{self.log_tail()}") from None
        return self

    def _answers(self) -> bool:
        return self._answers_ok("/system")

    def _ready(self) -> bool:
        return self._answers_ok("/neuronova/ready")

    def _answers_ok(self, path: str) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"Orthanc exited with {self.process.returncode}; log tail:\n{self.log_tail()}")
        try:
            return requests.get(self.url + path, auth=self.AUTH, timeout=1).ok
        except requests.RequestException:
            return False

    def log_tail(self, lines: int = 40) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as log_file:
            return "".join(log_file.readlines()[-lines:])

    def log_text(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as log_file:
            return log_file.read()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None and self._answers()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if getattr(self, "_log", None):
            self._log.close()

    # Small REST helpers
    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=120, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return requests.put(self.url + path, timeout=60, **kwargs)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.url + path, timeout=60)

    def stored_file(self, instance_id: str) -> bytes:
        """The bytes on disk of the instance's DICOM attachment (Orthanc's ab/cd/uuid layout)."""
        uuid = self.get(f"/instances/{instance_id}/attachments/dicom/info").json()["Uuid"]
        with open(os.path.join(self.config["StorageDirectory"], uuid[0:2], uuid[2:4], uuid), "rb") as stored:
            return stored.read()

    def instances(self) -> list[str]:
        return self.get("/instances").json()

    def clear(self) -> None:
        patients = self.get("/patients").json()
        for patient in patients:
            self.delete(f"/patients/{patient}")
        if patients:
            # Orthanc tells plugins of deletions through its change queue, after the DELETE has answered:
            # the plugin releases a deleted study's patient a moment later (README, known limits)
            time.sleep(0.5)


class OrthancWithLogin(OrthancServer):
    """Orthanc requiring HTTP Basic authentication, as a hospital would run it."""

    USER = ("radiographer", "secret")
    AUTH = USER

    def __init__(self, data_dir: str, overrides: dict | None = None):
        super().__init__(data_dir, {"AuthenticationEnabled": True, "RegisteredUsers": dict([self.USER]),
                                    **(overrides or {})})

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=60, auth=self.USER, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        return requests.post(self.url + path, timeout=120, auth=self.USER, **kwargs)

    def put(self, path: str, **kwargs) -> requests.Response:
        return requests.put(self.url + path, timeout=60, auth=self.USER, **kwargs)

    def delete(self, path: str) -> requests.Response:
        return requests.delete(self.url + path, timeout=60, auth=self.USER)
