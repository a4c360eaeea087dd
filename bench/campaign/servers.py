"""The campaign's Orthancs: started with tests/support/servers.py, watched for crashes and hangs, restarted."""

from __future__ import annotations

import os
import re
import signal
import tempfile

import requests

from ingest_bench import describe_exit, proc_status_kib
from support.servers import OrthancServer, wait_until

LOG_PROBLEM = re.compile(r"^E\d{4} |Traceback|Error|Segmentation fault|Aborted|terminate called|core dumped")


class Managed:
    """One Orthanc (with or without the plugin) whose crashes, hangs and restarts the campaign counts."""

    def __init__(self, label: str, root: str, plugin: bool, overrides: dict | None = None,
                 storage_dir: str | None = None):
        self.label, self.plugin = label, plugin
        self.data_dir = tempfile.mkdtemp(prefix=f"{label}-", dir=root)
        self.server = OrthancServer(self.data_dir, overrides=overrides, plugin=plugin, verbose=False)
        if storage_dir:  # the full-disk probe: storage and index on a small filesystem
            self.server.config["StorageDirectory"] = self.server.config["IndexDirectory"] = storage_dir
        self.crashes: list[dict] = []
        self.hangs: list[dict] = []
        self.restarts = 0
        self.last_log: list[str] = []

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.process.pid

    @property
    def storage_dir(self) -> str:
        return self.server.config["StorageDirectory"]

    def start(self) -> "Managed":
        self.server.start(timeout=90)
        return self

    def stop(self) -> None:
        self.server.stop()

    def kill9(self) -> None:
        if self.server.process and self.server.process.poll() is None:
            os.kill(self.server.process.pid, signal.SIGKILL)
            self.server.process.wait()

    def dead(self) -> int | None:
        """The exit code if the process has ended."""
        return self.server.process.poll() if self.server.process else None

    def answers(self, timeout: float = 5.0, path: str = "/system") -> bool:
        try:
            return requests.get(self.url + path, timeout=timeout).ok
        except requests.RequestException:
            return False

    def log_size(self) -> int:
        try:
            return os.path.getsize(self.server.log_path)
        except OSError:
            return 0

    def log_since(self, offset: int, limit: int = 8) -> list[str]:
        """The problem lines (errors, warnings, tracebacks) Orthanc logged since `offset`."""
        try:
            with open(self.server.log_path, "rb") as log:
                log.seek(offset)
                text = log.read(2_000_000).decode("utf-8", "replace")
        except OSError:
            return []
        lines = [line.strip()[:400] for line in text.splitlines() if LOG_PROBLEM.search(line)]
        return lines[:limit] + ([f"... {len(lines) - limit} more"] if len(lines) > limit else [])

    def after_request(self, what: str, log_offset: int | None = None) -> str | None:
        """'crash' (the process ended: counted, restarted) or 'hang' (alive, /system silent for 15 s: killed,
        counted, restarted) or None. The log lines since `log_offset` are kept in `last_log` (read before a
        restart writes its own)."""
        fault = None
        if self.dead() is None and not self.answers(5.0):
            back = wait_for(lambda: self.dead() is not None or self.answers(2.0), 10, 0.5)
            if not back:
                fault = "hang"
        if self.dead() is not None:
            fault = "crash"
        self.last_log = self.log_since(log_offset) if log_offset is not None else []
        if fault == "crash":
            self.crashes.append({"during": what, "exit": describe_exit(self.dead())})
            if not self.last_log:
                self.last_log = [f"(nothing logged; Orthanc {describe_exit(self.dead())})"]
        elif fault == "hang":
            self.hangs.append({"during": what})
            self.kill9()
        if fault:
            self.restart()
        return fault

    def restart(self) -> None:
        self.server.stop()
        self.restarts += 1
        self.server.start(timeout=90)

    def rss_kib(self) -> int | None:
        return proc_status_kib(self.pid, "VmRSS")

    # REST helpers that never raise on an HTTP status
    def get(self, path: str, timeout: float = 30, **kwargs) -> requests.Response:
        return requests.get(self.url + path, timeout=timeout, **kwargs)

    def instances(self) -> list[str]:
        return self.get("/instances").json()

    def delete_all(self) -> None:
        for instance in self.instances():
            requests.delete(f"{self.url}/instances/{instance}", timeout=30)

    def file_of(self, instance: str) -> bytes:
        return self.get(f"/instances/{instance}/file", headers={"Accept-Encoding": "identity"}).content

    def disk_file(self, instance: str) -> bytes | None:
        """The bytes the storage area keeps on disk for the instance (Orthanc's ab/cd/uuid layout)."""
        try:
            uuid = self.get(f"/instances/{instance}/attachments/dicom/info").json()["Uuid"]
            with open(os.path.join(self.storage_dir, uuid[0:2], uuid[2:4], uuid), "rb") as stored:
                return stored.read()
        except (OSError, ValueError, KeyError, requests.RequestException):
            return None


def wait_for(predicate, timeout: float, interval: float = 0.2):
    """support.servers.wait_until, answering None instead of raising when the time is up."""
    try:
        return wait_until(predicate, timeout, "a campaign condition", interval)
    except TimeoutError:
        return None
