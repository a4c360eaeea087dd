#!/usr/bin/env python3
"""Ingest benchmark: what the NeuroNova storage-area plugin costs, and saves, against plain Orthanc and GDCM.

One run, one Orthanc at a time (never two, so they never share the cores), a fresh storage folder each:
  plain       Orthanc 1.10.1 with the project's orthanc.json, Python plugin removed (stores as received)
  ingest      + the NeuroNova plugin, Transcoding Target "htj2k", When "ingest" (compressed before the
              file reaches the disk, in the storage area's create)
  background  + the NeuroNova plugin, Target "htj2k", When "background" (stored as received, compressed
              soon after by Background.Threads worker threads)
  gdcm        Orthanc + the GDCM plugin, IngestTranscoding 1.2.840.10008.1.2.4.90, no NeuroNova plugin
  j2k         (optional, not in the default set) NeuroNova plugin, Target "j2k", When "ingest"
Measured:
  - ingest throughput (instances/s) over REST POST /instances and C-STORE (dcmtk storescu), 1 and 4
    clients, on N copies of a 0.5 MB CT with fresh UIDs;
  - for background, the backlog compression rate after the ingest (GET /neuronova/storage polled until
    pending is 0 and compressed_files equals the number of stored instances);
  - read-back latency of GET /instances/{id}/file on different stored slices (plain vs ingest),
    storage cache off and Orthanc restarted between storing and reading;
  - Orthanc's peak memory (VmHWM, sampled VmRSS) for one ~100 MB multi-frame instance (plain vs ingest);
  - bytes on disk (Orthanc's two-level storage folders) for real CT/MR/CR files against received bytes.

    .venv/bin/python bench/ingest_bench.py [--quick] [--instances N] [--configs plain,ingest,...]

Results: a table on stdout, JSON in bench/results/<timestamp>.json. Exit status 1 when the run is
invalid (a POST not answered 200/Success, a storescu exit code not 0, a missing or wrongly stored
instance, a backlog that never drained, a plugin route missing, a server that died or did not start).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import datetime
import importlib
import io
import json
import os
import platform
import pstats
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

import numpy as np
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCH_DIR)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))
from support.servers import OrthancServer  # noqa: E402

EXPLICIT_LE = "1.2.840.10008.1.2.1"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
SYNTAX_NAMES = {EXPLICIT_LE: "Explicit VR LE", J2K_LOSSLESS: "J2K lossless", HTJ2K_LOSSLESS: "HTJ2K lossless",
                "1.2.840.10008.1.2": "Implicit VR LE", "1.2.840.10008.1.2.2": "Explicit VR BE"}
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
GDCM_PLUGIN = "/usr/share/orthanc/plugins/libOrthancGdcm.so"
WORKLOAD_SOURCE = "693_UNCR.dcm"  # 512 x 512 16-bit CT, ~0.5 MB, Explicit VR Little Endian
# Real uncompressed CT / MR / CR from pydicom-data (SOP Instance UIDs left as they are).
REAL_FILES = ["693_UNCR.dcm", "MR2_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "RG1_UNCR.dcm",
              "RG3_UNCR.dcm", "eCT_Supplemental.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
CLIENTS = (1, 4)
TRANSPORTS = ("rest", "cstore")
TRANSPORT_LABEL = {"rest": "REST", "cstore": "C-STORE"}
MB = 1e6
MIB = 1024 * 1024
STORAGE_ROUTE = "/neuronova/storage"
# Orthanc gzips HTTP answers when the client accepts it (HttpCompressionEnabled, on by default): requests asks for gzip,
# and compressing a 0.5 MB DICOM file costs Orthanc ~26 ms of CPU. The read-back measures the storage read, so it asks
# for the file as is (and measures a few gzip reads separately, for information).
IDENTITY = {"Accept-Encoding": "identity"}
HEX2 = re.compile(r"[0-9a-f]{2}")

# Targets (0.5 MB CT; storage on the real CT/MR files).
TARGET_INGEST_VS_PLAIN = 0.45      # REST x4 and C-STORE x4
TARGET_INGEST_VS_GDCM = 2.0        # every cell GDCM survives
TARGET_BACKGROUND_VS_PLAIN = 0.8   # while ingesting, REST x4 and C-STORE x4
TARGET_BACKLOG_PER_S = 100.0       # instances compressed per second after the ingest, every background cell
MIN_BACKLOG = 20                   # fewer instances left at the end of the ingest: no meaningful rate (poll interval)
TARGET_STORAGE_RATIO = 2.5         # received bytes / bytes on disk, ingest, real files
TARGET_READBACK_DELTA_MS = 3.0     # median GET /file latency, ingest minus plain
TARGET_MEMORY_RATIO = 2.0          # peak RSS above idle for one 100 MB instance, ingest / plain


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    plugin: bool                 # the NeuroNova (Python) plugin is loaded
    overrides: dict
    served: frozenset            # transfer syntaxes GET /instances/{id}/file may answer with
    storage_area: bool = False   # compression in the NeuroNova storage area: check GET /neuronova/storage
    background: bool = False     # compression after the ingest: wait for the backlog to drain


def plugin_config(target: str, when: str, threads: int = 2) -> dict:
    transcoding = {"Target": target, "When": when}
    if when == "background":
        transcoding["Background"] = {"Threads": threads}
    return {"NeuroNova": {"Transcoding": transcoding}}


def make_configs(background_threads: int) -> list[Config]:
    # The storage area may serve the original (decompressed on read) or the compressed object: both are accepted,
    # the compression itself is checked on disk and in GET /neuronova/storage.
    return [
        Config("plain", "Orthanc 1.10.1, no NeuroNova plugin (stores as received)", False, {},
               frozenset({EXPLICIT_LE})),
        Config("ingest", "NeuroNova plugin, Target htj2k, When ingest (compressed in the storage area's create)",
               True, plugin_config("htj2k", "ingest"), frozenset({EXPLICIT_LE, HTJ2K_LOSSLESS}), storage_area=True),
        Config("background", f"NeuroNova plugin, Target htj2k, When background ({background_threads} thread(s))",
               True, plugin_config("htj2k", "background", background_threads),
               frozenset({EXPLICIT_LE, HTJ2K_LOSSLESS}), storage_area=True, background=True),
        Config("gdcm", "GDCM plugin, IngestTranscoding J2K lossless, no NeuroNova plugin", False,
               {"IngestTranscoding": J2K_LOSSLESS}, frozenset({J2K_LOSSLESS})),
        Config("j2k", "NeuroNova plugin, Target j2k, When ingest", True, plugin_config("j2k", "ingest"),
               frozenset({EXPLICIT_LE, J2K_LOSSLESS}), storage_area=True),
    ]


DEFAULT_CONFIGS = ("plain", "ingest", "background", "gdcm")
COMMON_OVERRIDES = {"StorageCompression": False}
NO_STORAGE_CACHE = {"MaximumStorageCacheSize": 0}  # Orthanc >= 1.10.0: in MB, 0 = no cache


class Invalid(Exception):
    """Something that makes a measurement meaningless (not merely slow)."""


class StartFailed(Invalid):
    """Orthanc with this configuration does not start (e.g. the plugin rejects a configuration key)."""


# ---------------------------------------------------------------------------------------------------------
# Workload


@dataclass
class Workload:
    files: list[str]
    sizes: list[int]
    sop_uids: list[str]

    @property
    def total_bytes(self) -> int:
        return sum(self.sizes)

    def bodies(self) -> list[bytes]:
        result = []
        for path in self.files:
            with open(path, "rb") as handle:
                result.append(handle.read())
        return result

    def path_of(self, uid: str) -> str:
        return self.files[self.sop_uids.index(uid)]


def workload_source():
    source = get_testdata_file(WORKLOAD_SOURCE)
    if source is None:
        raise SystemExit(f"pydicom-data has no {WORKLOAD_SOURCE}: install pydicom-data (requirements-dev.txt)")
    return dcmread(source)


def make_workload(folder: str, count: int, series: int, name: str) -> Workload:
    """`count` copies of 693_UNCR, each with a new SOP Instance UID, in one new study of `series` series."""
    os.makedirs(folder, exist_ok=True)
    dataset = workload_source()
    study = generate_uid()
    series_uids = [generate_uid() for _ in range(max(1, series))]
    dataset.StudyInstanceUID = study
    dataset.StudyDescription = f"NeuroNova ingest benchmark ({name})"
    files, sizes, uids = [], [], []
    for index in range(count):
        uid = generate_uid()
        part = index * len(series_uids) // count
        dataset.SOPInstanceUID = uid
        dataset.file_meta.MediaStorageSOPInstanceUID = uid
        dataset.SeriesInstanceUID = series_uids[part]
        dataset.SeriesNumber = part + 1
        dataset.InstanceNumber = index + 1
        path = os.path.join(folder, f"{name}_{index:05d}.dcm")
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
        sizes.append(os.path.getsize(path))
        uids.append(uid)
    return Workload(files, sizes, uids)


def make_big_instance(folder: str, frames: int) -> Workload:
    """One multi-frame 16-bit grayscale object (Multi-frame Grayscale Word SC, Explicit VR LE, fresh UIDs): `frames`
    512 x 512 frames, each the workload CT slice shifted by a few rows (real content, no two frames alike)."""
    os.makedirs(folder, exist_ok=True)
    dataset = workload_source()
    pixels = dataset.pixel_array
    stack = np.stack([np.roll(pixels, 3 * index, axis=0) for index in range(frames)]).astype(pixels.dtype)
    uid = generate_uid()
    dataset.SOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC
    dataset.file_meta.MediaStorageSOPClassUID = MULTIFRAME_GRAYSCALE_WORD_SC
    dataset.SOPInstanceUID = uid
    dataset.file_meta.MediaStorageSOPInstanceUID = uid
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.StudyDescription = "NeuroNova ingest benchmark (multi-frame, memory)"
    dataset.NumberOfFrames = frames
    dataset.PixelData = stack.tobytes()
    path = os.path.join(folder, "multiframe.dcm")
    dataset.save_as(path, enforce_file_format=True)
    return Workload([path], [os.path.getsize(path)], [uid])


@dataclass
class RealFile:
    name: str
    path: str
    size: int
    sop_uid: str
    description: str


def real_files() -> tuple[list[RealFile], list[str]]:
    found, notes, seen = [], [], set()
    for name in REAL_FILES:
        path = get_testdata_file(name)
        if path is None:
            notes.append(f"{name}: not in this pydicom-data, skipped")
            continue
        dataset = dcmread(path, stop_before_pixels=True)
        uid = str(dataset.SOPInstanceUID)
        if uid in seen:
            notes.append(f"{name}: same SOP Instance UID as another file, skipped")
            continue
        seen.add(uid)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        description = (f"{dataset.get('Modality', '?')} {dataset.Rows}x{dataset.Columns}"
                       f"{f' x{frames}' if frames > 1 else ''} {dataset.BitsAllocated}/{dataset.BitsStored} bit"
                       f"{' signed' if dataset.get('PixelRepresentation', 0) else ''}")
        found.append(RealFile(name, path, os.path.getsize(path), uid, description))
    return found, notes


# ---------------------------------------------------------------------------------------------------------
# CPU and memory accounting

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
        return float("nan")


def system_busy_seconds() -> float:
    with open("/proc/stat", encoding="ascii") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system


class CpuMeter:
    def __init__(self, server_pid: int):
        self.pid = server_pid

    def __enter__(self):
        self.started = time.perf_counter()
        self.server, self.own, self.busy = process_cpu_seconds(self.pid), own_cpu_seconds(), system_busy_seconds()
        return self

    def __exit__(self, *exc):
        self.server = process_cpu_seconds(self.pid) - self.server
        self.own = own_cpu_seconds() - self.own
        self.busy = system_busy_seconds() - self.busy
        self.seconds = time.perf_counter() - self.started

    def report(self, seconds: float | None = None, per: int | None = None) -> dict:
        seconds = self.seconds if seconds is None else seconds
        cores = os.cpu_count() or 1
        foreign = max(0.0, self.busy - self.server - self.own)
        result = {"server_cpu_s": round(self.server, 3), "client_cpu_s": round(self.own, 3),
                  "system_busy_cpu_s": round(self.busy, 3), "other_processes_cpu_s": round(foreign, 3),
                  "other_processes_share_of_machine": round(foreign / (cores * seconds), 3) if seconds > 0 else None,
                  "server_cores_used": round(self.server / seconds, 2) if seconds > 0 else None}
        if per:
            result["server_cpu_ms_per_instance"] = round(self.server * 1000 / per, 2)
        return result


def proc_status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Samples VmRSS of a process every `interval` s in a thread; VmHWM is reset first where Linux allows it
    (clear_refs 5), so that the high-water mark read at the end is the peak during the measurement."""

    def __init__(self, pid: int, interval: float = 0.005):
        self.pid, self.interval, self.peak, self.samples = pid, interval, 0, 0
        self.stop_event = threading.Event()
        self.hwm_reset = False

    def __enter__(self):
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w", encoding="ascii") as handle:
                handle.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self.stop_event.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak = max(self.peak, rss)
                self.samples += 1
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self.stop_event.set()
        self.thread.join()
        self.hwm = proc_status_kib(self.pid, "VmHWM")


# ---------------------------------------------------------------------------------------------------------
# Disk


def disk_usage(storage_dir: str) -> dict:
    """Bytes of the files in Orthanc's storage layout (two levels of two-hex-digit folders: what the storage area
    writes), and, separately, everything else under the folder except the index database (index, index-wal, ...)."""
    layout_files = layout_bytes = other_bytes = 0
    other_names = []
    for top, folders, names in os.walk(storage_dir):
        relative = os.path.relpath(top, storage_dir)
        parts = [] if relative == "." else relative.split(os.sep)
        in_layout = len(parts) == 2 and all(HEX2.fullmatch(p) for p in parts)
        for name in names:
            try:
                size = os.path.getsize(os.path.join(top, name))
            except OSError:
                continue
            if in_layout:
                layout_files += 1
                layout_bytes += size
            elif not (not parts and name.startswith("index")):
                other_bytes += size
                if len(other_names) < 10:
                    other_names.append(os.path.join(relative, name))
    return {"layout_files": layout_files, "layout_bytes": layout_bytes, "other_bytes_not_index": other_bytes,
            "other_files_sample": other_names}


# ---------------------------------------------------------------------------------------------------------
# Clients


def send_rest(url: str, bodies: list[bytes], clients: int, timeout: float) -> tuple[float, list[str]]:
    """POST every body to /instances from `clients` threads (one Session each); (seconds, problems)."""
    problems: list[str] = []
    lock = threading.Lock()
    next_index = [0]
    barrier = threading.Barrier(clients + 1)

    def worker():
        with requests.Session() as session:
            barrier.wait()
            while True:
                with lock:
                    index = next_index[0]
                    next_index[0] += 1
                if index >= len(bodies):
                    return
                try:
                    response = session.post(url + "/instances", data=bodies[index], timeout=timeout,
                                            headers={"Content-Type": "application/dicom"})
                    status = response.json().get("Status") if response.status_code == 200 else None
                    if response.status_code != 200 or status != "Success":
                        problem = (f"POST #{index}: HTTP {response.status_code}, Status {status!r}: "
                                   f"{response.text[:200]}")
                    else:
                        problem = None
                except (requests.RequestException, ValueError, AttributeError) as error:
                    problem = f"POST #{index}: {type(error).__name__}: {error}"
                if problem:
                    with lock:
                        problems.append(problem)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    deadline = time.monotonic() + timeout * max(1, len(bodies))
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    elapsed = time.perf_counter() - started
    if any(thread.is_alive() for thread in threads):
        problems.append("REST clients still running at the deadline")
    return elapsed, problems


def find_storescu() -> str:
    """dcmtk's storescu (pynetdicom installs another `storescu` into the venv: not that one)."""
    path = os.environ.get("PATH", "").split(os.pathsep)
    candidates = ["/usr/bin/storescu"] + [os.path.join(folder, "storescu") for folder in path]
    for candidate in dict.fromkeys(candidates):
        if not (os.path.isfile(candidate) and os.access(candidate, os.X_OK)):
            continue
        try:
            version = subprocess.run([candidate, "--version"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        if "dcmtk" in version.lower():
            return candidate
    raise SystemExit("dcmtk's storescu was not found (needed for the C-STORE measurements): install the Debian package "
                     "'dcmtk' (make system-packages, or apt-get install dcmtk). pynetdicom's storescu is not used.")


def send_storescu(storescu: str, port: int, called_aet: str, files: list[str], clients: int,
                  timeout: float) -> tuple[float, list[str]]:
    """`clients` storescu processes at once, each sending its share of the files in one association."""
    shares = [files[i::clients] for i in range(clients)]
    problems: list[str] = []
    started = time.perf_counter()
    processes = [subprocess.Popen([storescu, "-aet", f"BENCHSCU{i}", "-aec", called_aet, "127.0.0.1", str(port),
                                   *share], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                 for i, share in enumerate(shares) if share]
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for process in processes:
            try:
                outputs.append(process.communicate(timeout=max(0.1, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                process.kill()
                outputs.append(process.communicate()[0])
                problems.append(f"storescu pid {process.pid} killed after the {timeout:.0f}s timeout")
    finally:  # interrupted: leave no storescu of ours behind
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    elapsed = time.perf_counter() - started
    for process, output in zip(processes, outputs):
        if process.returncode != 0:
            problems.append(f"storescu exit code {process.returncode}: {output.strip()[-400:]}")
        elif output.strip():  # storescu is silent on success without -v; anything else is a warning or error
            problems.append(f"storescu said: {output.strip()[-400:]}")
    return elapsed, problems


# ---------------------------------------------------------------------------------------------------------
# Servers


def error_lines(text: str, limit: int = 6) -> list[str]:
    lines = [line.strip() for line in text.splitlines()
             if line.startswith("E") or "Error" in line or "Traceback" in line or "NeuroNova" in line]
    return lines[-limit:]


class Servers:
    """Starts one Orthanc at a time and makes sure it is stopped, whatever happens."""

    def __init__(self, root: str, keep: bool, without_new_keys: bool):
        self.root, self.keep, self.without_new_keys = root, keep, without_new_keys
        self.current: OrthancServer | None = None
        self.counter = 0

    def new_data_dir(self, config: Config, label: str) -> str:
        self.counter += 1
        return os.path.join(self.root, f"{self.counter:02d}_{config.key}_{label}")

    def start(self, config: Config, label: str, extra: dict | None = None, data_dir: str | None = None) -> OrthancServer:
        """A fresh Orthanc (fresh storage unless `data_dir` is given: then a restart on that storage)."""
        assert self.current is None, "never two Orthancs at once"
        data_dir = data_dir or self.new_data_dir(config, label)
        overrides = {**COMMON_OVERRIDES, **config.overrides, **(extra or {})}
        server = OrthancServer(data_dir, overrides=overrides, plugin=config.plugin, verbose=False)
        transcoding = server.config.get("NeuroNova", {}).get("Transcoding")
        if isinstance(transcoding, dict):
            transcoding.pop("Verify", None)  # removed: verification is mandatory in the storage-area plugin
            if self.without_new_keys:  # a plugin that predates the storage area rejects these
                transcoding.pop("When", None)
                transcoding.pop("Background", None)
        if config.key == "gdcm" and GDCM_PLUGIN not in server.config.get("Plugins", []):
            server.config["Plugins"] = [*server.config.get("Plugins", []), GDCM_PLUGIN]
        try:
            server.start(timeout=120)
        except RuntimeError as error:
            server.stop()
            try:
                lines = error_lines(server.log_text())
            except OSError:
                lines = []
            if not self.keep:
                shutil.rmtree(data_dir, ignore_errors=True)
            detail = " | ".join(lines) or str(error).splitlines()[0]
            raise StartFailed(f"Orthanc ({config.key}) did not start: {detail[:600]}") from None
        self.current = server
        return server

    def stop(self, remove: bool = True) -> None:
        server, self.current = self.current, None
        if server is None:
            return
        server.stop()
        if remove and not self.keep:
            shutil.rmtree(server.data_dir, ignore_errors=True)

    def restart(self, config: Config, label: str, extra: dict | None = None) -> OrthancServer:
        """Stop the current Orthanc and start the same configuration again on the same storage."""
        data_dir = self.current.data_dir
        self.stop(remove=False)
        return self.start(config, label, extra, data_dir=data_dir)


def storage_dir(server: OrthancServer) -> str:
    return server.config["StorageDirectory"]


KNOWN_HTJ2K_ERROR = f"Unsupported transfer syntax: {HTJ2K_LOSSLESS}"


def log_problems(server: OrthancServer) -> tuple[int, list[str]]:
    """(count of the error Orthanc 1.10 logs for an HTJ2K object it parses, because DCMTK does not know the
    syntax: expected, harmless), [other error lines of Orthanc's log, and the plugin's warnings]."""
    try:
        text = server.log_text()
    except OSError:
        return 0, []
    lines = [line for line in text.splitlines()
             if line.startswith("E") or ("NeuroNova" in line and line.startswith("W"))]
    known = [line for line in lines if KNOWN_HTJ2K_ERROR in line]
    return len(known), [line for line in lines if KNOWN_HTJ2K_ERROR not in line]


def stored_instances(server: OrthancServer) -> dict[str, dict]:
    """SOP Instance UID -> {id, size (FileSize: what Orthanc believes it stored)}."""
    response = server.get("/instances?expand")
    response.raise_for_status()
    return {item["MainDicomTags"].get("SOPInstanceUID", ""): {"id": item["ID"], "size": int(item["FileSize"])}
            for item in response.json()}


def count_instances(server: OrthancServer) -> int:
    return int(server.get("/statistics").json().get("CountInstances", -1))


def stored_syntax(server: OrthancServer, instance_id: str) -> str:
    header = server.get(f"/instances/{instance_id}/header").json()
    return header.get("0002,0010", {}).get("Value", "").strip("\0 ")


def storage_status(server: OrthancServer) -> dict:
    """GET /neuronova/storage, checked: a clear Invalid when the route is missing or answers something else."""
    try:
        response = server.get(STORAGE_ROUTE)
    except requests.RequestException as error:
        raise Invalid(f"GET {STORAGE_ROUTE}: {type(error).__name__}: {error}") from None
    if response.status_code == 404:
        raise Invalid(f"GET {STORAGE_ROUTE} answered 404: this plugin has no storage route (the storage-area "
                      f"code has not landed, or the route moved); compression cannot be checked")
    if response.status_code != 200:
        raise Invalid(f"GET {STORAGE_ROUTE} answered HTTP {response.status_code}: {response.text[:200]}")
    try:
        body = response.json()
    except ValueError:
        raise Invalid(f"GET {STORAGE_ROUTE} answered no JSON: {response.text[:200]}") from None
    missing = [key for key in ("files", "compressed_files", "plain_files", "pending") if key not in body]
    if body.get("success") is not True or missing:
        raise Invalid(f"GET {STORAGE_ROUTE}: success {body.get('success')!r}, missing keys {missing}: "
                      f"{json.dumps(body)[:200]}")
    return body


def wait_drained(server: OrthancServer, expected: int, timeout: float, interval: float) -> dict:
    """Poll GET /neuronova/storage until pending is 0 and compressed_files == `expected` (the DICOM attachments).
    Times from the call (= the end of the ingest). Raises Invalid on timeout, with the last status."""
    started = time.perf_counter()
    first = storage_status(server)
    status, polls = first, 1
    while not (status["pending"] == 0 and status["compressed_files"] == expected):
        if time.perf_counter() - started > timeout:
            raise Invalid(f"backlog not drained {timeout:.0f} s after the ingest: pending {status['pending']}, "
                          f"compressed_files {status['compressed_files']} of {expected} instances "
                          f"(plain_files {status['plain_files']})")
        time.sleep(interval)
        status = storage_status(server)
        polls += 1
    seconds = time.perf_counter() - started
    compressed = status["compressed_files"] - first["compressed_files"]
    return {"pending_at_end_of_ingest": first["pending"], "compressed_at_end_of_ingest": first["compressed_files"],
            "compressed_after_ingest": compressed, "drain_seconds": round(seconds, 4), "polls": polls,
            "backlog_instances_per_s": round(compressed / seconds, 2) if compressed > 0 and seconds > 0 else None,
            "status_at_end_of_ingest": first, "status_drained": status}


def check_compressed(server: OrthancServer, expected: int) -> tuple[dict | None, list[str]]:
    """For the storage-area configurations: GET /neuronova/storage says every DICOM attachment is compressed."""
    try:
        status = storage_status(server)
    except Invalid as error:
        return None, [str(error)]
    problems = []
    if status["pending"] != 0:
        problems.append(f"{STORAGE_ROUTE}: pending {status['pending']} (expected 0)")
    if status["compressed_files"] != expected:
        problems.append(f"{STORAGE_ROUTE}: compressed_files {status['compressed_files']}, expected {expected} "
                        f"(one per stored instance; plain_files {status['plain_files']})")
    return status, problems


def pixel_data_of(data: bytes) -> bytes:
    return dcmread(io.BytesIO(data)).PixelData


def check_stored(server: OrthancServer, config: Config, workload: Workload, sample: int,
                 rng: random.Random) -> tuple[dict, list[str]]:
    """Exactly the workload is stored, every instance in one of the configuration's served syntaxes, and a sample of
    the files read back with pydicom: same SOP, same length as FileSize, and (served uncompressed) the same pixels."""
    problems = []
    stored = stored_instances(server)
    missing = [uid for uid in workload.sop_uids if uid not in stored]
    extra = len(stored) - (len(workload.sop_uids) - len(missing))
    if missing:
        problems.append(f"{len(missing)} of {len(workload.sop_uids)} instances not stored")
    if extra:
        problems.append(f"{extra} unexpected instances stored")
    present = [uid for uid in workload.sop_uids if uid in stored]
    syntaxes: dict[str, int] = {}
    for uid in present:  # every instance, from its stored file meta
        syntax = stored_syntax(server, stored[uid]["id"])
        syntaxes[syntax] = syntaxes.get(syntax, 0) + 1
    if set(syntaxes) - config.served:
        problems.append(f"stored transfer syntaxes {syntaxes}, expected only {sorted(config.served)}")
    checked, pixels_compared, wrong = 0, 0, []
    for uid in rng.sample(present, min(sample, len(present))):
        data = server.get(f"/instances/{stored[uid]['id']}/file", headers=IDENTITY).content
        dataset = dcmread(io.BytesIO(data))
        syntax, sop = str(dataset.file_meta.TransferSyntaxUID), str(dataset.SOPInstanceUID)
        checked += 1
        if syntax not in config.served or sop != uid or len(data) != stored[uid]["size"]:
            wrong.append(f"{uid}: syntax {syntax}, SOP {sop}, {len(data)} bytes (expected {sorted(config.served)}, "
                         f"the same SOP, {stored[uid]['size']} bytes)")
        elif syntax == EXPLICIT_LE:  # lossless round trip through the storage area
            with open(workload.path_of(uid), "rb") as handle:
                original = pixel_data_of(handle.read())
            pixels_compared += 1
            if dataset.PixelData != original:
                wrong.append(f"{uid}: PixelData read back differs from the PixelData sent")
    if wrong:
        problems.append(f"{len(wrong)} of {checked} stored files read with pydicom are wrong, e.g. {wrong[0]}")
    statistics_ = server.get("/statistics").json()
    return {"stored_instances": len(present), "file_size_sum": sum(stored[uid]["size"] for uid in present),
            "total_disk_size": int(statistics_.get("TotalDiskSize", 0)), "syntaxes": syntaxes,
            "files_checked_with_pydicom": checked, "pixel_data_compared": pixels_compared}, problems


def plugin_history(server: OrthancServer, uids: set[str]) -> dict | None:
    """The plugin's own pipeline timings (GET /neuronova/history), where it still records them."""
    try:
        response = server.get("/neuronova/history", params={"limit": 10000})
        if response.status_code != 200:
            return None
        entries = [entry for entry in response.json().get("entries", []) if entry.get("sop_instance_uid") in uids]
        durations = sorted(float(entry["duration_ms"]) for entry in entries if "duration_ms" in entry)
        if not durations:
            return {"entries": len(entries)}
        ends = [datetime.datetime.fromisoformat(entry["time"]).timestamp() * 1000 for entry in entries]
        starts = [end - float(entry["duration_ms"]) for end, entry in zip(ends, entries)]
        span = max(ends) - min(starts)
    except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {"entries": len(entries), "paths": sorted({str(entry.get("path", "")) for entry in entries}),
            "actions": sorted({str(entry.get("action", "")) for entry in entries}),
            "errors": sorted({str(entry["error"]) for entry in entries if entry.get("error")})[:5],
            "duration_ms_mean": round(statistics.fmean(durations), 2),
            "duration_ms_median": round(statistics.median(durations), 2),
            "duration_ms_p90": round(durations[int(0.9 * (len(durations) - 1))], 2),
            "duration_ms_max": round(durations[-1], 2),
            "pipelines_in_flight_mean": round(sum(durations) / span, 2) if span > 0 else None}


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def crashed_code(server: OrthancServer | None) -> int | None:
    if server is not None and server.process is not None and server.process.poll() not in (None, 0):
        return server.process.returncode
    return None


# ---------------------------------------------------------------------------------------------------------
# Measurements


def delete_all_studies(server: OrthancServer) -> None:
    for study in server.get("/studies").json():
        server.delete(f"/studies/{study}").raise_for_status()
    count = count_instances(server)
    if count != 0:
        raise Invalid(f"{count} instances left after deleting every study")


def warm_up(server: OrthancServer, config: Config, warmup: Workload, storescu: str, args) -> None:
    """A few instances by REST and one association, then an empty server again (a background configuration first
    compresses them all). One client only: Orthanc with GDCM ingest transcoding can crash under concurrent REST
    uploads, and that belongs to the measurement."""
    if not warmup.files:
        return
    half = max(1, len(warmup.files) // 2)
    _, problems = send_rest(server.url, warmup.bodies()[:half], 1, args.request_timeout)
    if len(warmup.files) > half:
        _, more = send_storescu(storescu, server.dicom_port, server.aet, warmup.files[half:], 1, args.request_timeout)
        problems += more
    if problems:
        raise Invalid(f"warm-up failed: {problems[:3]}")
    if config.background:
        wait_drained(server, count_instances(server), args.drain_timeout, args.poll_interval)
    delete_all_studies(server)


def measure_once(servers: Servers, config: Config, transport: str, clients: int, workload: Workload,
                 bodies: list[bytes], warmup: Workload, storescu: str, args, rng: random.Random) -> dict:
    """One measurement on a fresh, warmed-up Orthanc. `crashed` is set when Orthanc died under the load."""
    label = f"{transport}x{clients}"
    count = len(workload.files)
    result = {"config": config.key, "transport": transport, "clients": clients, "instances": count,
              "input_bytes": workload.total_bytes, "problems": []}
    server = None
    try:
        server = servers.start(config, label)
        try:
            warm_up(server, config, warmup, storescu, args)
            with CpuMeter(server.process.pid) as cpu:
                if transport == "rest":
                    seconds, problems = send_rest(server.url, bodies, clients, args.request_timeout)
                else:
                    seconds, problems = send_storescu(storescu, server.dicom_port, server.aet, workload.files, clients,
                                                      args.run_timeout)
            result["seconds"] = round(seconds, 4)
            result["instances_per_s"] = round(count / seconds, 2)
            result["mb_per_s"] = round(workload.total_bytes / MB / seconds, 2)
            result["cpu"] = cpu.report(seconds, per=count)
            result["problems"] += problems
            if config.background and server.process.poll() is None:
                with CpuMeter(server.process.pid) as drain_cpu:
                    try:
                        drain = wait_drained(server, count_instances(server), args.drain_timeout, args.poll_interval)
                    except Invalid as error:
                        result["problems"].append(str(error))
                        drain = None
                if drain:
                    drain["cpu"] = drain_cpu.report(per=drain["compressed_after_ingest"] or None)
                    result["drain"] = drain
                    # From the start of the ingest until everything is compressed.
                    result["end_to_end_instances_per_s"] = round(count / (seconds + drain["drain_seconds"]), 2)
            if not server.alive():
                result["problems"].append("Orthanc stopped answering")
            else:
                stored, problems = check_stored(server, config, workload, args.sample, rng)
                result.update(stored)
                result["problems"] += problems
                if config.storage_area:
                    status, problems = check_compressed(server, count_instances(server))
                    result["storage_status"] = status
                    result["problems"] += problems
                result["disk"] = disk_usage(storage_dir(server))
                if config.plugin:
                    result["plugin_history"] = plugin_history(server, set(workload.sop_uids))
            known, log_lines = log_problems(server)
            result["htj2k_syntax_log_errors"] = known
            if log_lines:
                result["log_problems"] = log_lines[:10]
        finally:
            code = crashed_code(server)
            if code is not None:
                result["crashed"] = code  # negative: killed by that signal
            servers.stop()
    except StartFailed as error:
        result["start_failed"] = str(error)
        result["problems"].append(str(error))
    except Invalid as error:
        result["problems"].append(str(error))
    except (RuntimeError, requests.RequestException, OSError, ValueError, KeyError) as error:
        result["problems"].append(f"{type(error).__name__}: {error}")
    return result


def with_retries(config: Config, attempts: int, once) -> dict:
    """`once()` again on a fresh Orthanc while Orthanc crashes (at most `attempts` in all). A reference Orthanc (no
    NeuroNova plugin) crashing every time makes the measurement "unmeasurable", not the run invalid."""
    crashes = []
    for attempt in range(1, attempts + 1):
        result = once()
        if "crashed" not in result:
            break
        crashes.append(f"attempt {attempt}: Orthanc {describe_exit(result['crashed'])}; "
                       f"{(result['problems'] or ['no client error'])[0][:160]}")
    else:
        result["unmeasurable"] = f"Orthanc crashed in every attempt ({attempts}): {describe_exit(result['crashed'])}"
        if config.plugin:  # our own server crashing is never "the reference's problem"
            result["problems"] = [result["unmeasurable"]] + result["problems"][:3]
        else:
            result["client_errors_while_crashing"] = result.pop("problems")[:5]
            result["problems"] = []
    result["attempts"] = len(crashes) + (0 if "unmeasurable" in result else 1)
    if crashes:
        result["crashes"] = crashes
    return result


def measure(servers: Servers, config: Config, transport: str, clients: int, workload: Workload,
            bodies: list[bytes], warmup: Workload, storescu: str, args, rng: random.Random) -> dict:
    """Best of --repeat measurements; a measurement whose Orthanc crashed is retried (--attempts in all)."""
    kept: list[dict] = []
    crashes: list[str] = []
    attempts = 0
    last_crash = None
    while len(kept) < args.repeat and attempts < args.repeat + args.attempts - 1:
        attempts += 1
        run = measure_once(servers, config, transport, clients, workload, bodies, warmup, storescu, args, rng)
        if "start_failed" in run:
            return run
        if "crashed" in run:
            crashes.append(f"attempt {attempts}: Orthanc {describe_exit(run['crashed'])}; "
                           f"{(run['problems'] or ['no client error'])[0][:160]}")
            last_crash = run
            continue
        kept.append(run)
        if run["problems"]:
            break  # not a crash: a real failure, do not hide it behind a better repetition
    if not kept:
        result = last_crash
        result["unmeasurable"] = (f"Orthanc crashed in every attempt ({attempts}): "
                                  f"{describe_exit(last_crash['crashed'])}")
        if config.plugin:
            result["problems"] = [result["unmeasurable"]] + result["problems"][:3]
        else:
            result["client_errors_while_crashing"] = result.pop("problems")[:5]
            result["problems"] = []
    else:
        valid = [run for run in kept if not run["problems"]]
        result = max(valid, key=lambda run: run["instances_per_s"]) if valid else kept[-1]
        if len(kept) > 1:
            result["repetitions_instances_per_s"] = [run.get("instances_per_s") for run in kept]
            if config.background:
                result["repetitions_backlog_per_s"] = [(run.get("drain") or {}).get("backlog_instances_per_s")
                                                       for run in kept]
    result["attempts"] = attempts
    if crashes:
        result["crashes"] = crashes
    return result


def attachment_disk_bytes(server: OrthancServer, folder: str, instance_id: str) -> int | None:
    """Bytes on disk of an instance's attachments (Orthanc's layout: <uuid[0:2]>/<uuid[2:4]>/<uuid>), or None."""
    total = 0
    try:
        names = server.get(f"/instances/{instance_id}/attachments").json()
        for name in names:
            response = server.get(f"/instances/{instance_id}/attachments/{name}/info")  # Orthanc 1.10: "Uuid"
            if response.status_code != 200:
                return None
            uuid = str(response.json().get("Uuid", "")).strip()
            path = os.path.join(folder, uuid[0:2], uuid[2:4], uuid)
            if not os.path.isfile(path):
                return None
            total += os.path.getsize(path)
    except (requests.RequestException, ValueError, TypeError, OSError):
        return None
    return total


def measure_storage_once(servers: Servers, config: Config, files: list[RealFile], args) -> dict:
    """Store the real files (REST, one at a time); bytes on disk in all and per file, served syntax of each."""
    result = {"config": config.key, "files": {}, "problems": [], "received_bytes": sum(f.size for f in files)}
    server = None
    try:
        server = servers.start(config, "realfiles")
        try:
            with requests.Session() as session:
                for real in files:
                    with open(real.path, "rb") as handle:
                        body = handle.read()
                    response = session.post(server.url + "/instances", data=body, timeout=args.request_timeout,
                                            headers={"Content-Type": "application/dicom"})
                    if response.status_code != 200 or response.json().get("Status") != "Success":
                        result["problems"].append(f"{real.name}: HTTP {response.status_code} {response.text[:200]}")
            if config.background:
                try:
                    result["drain"] = wait_drained(server, count_instances(server), args.drain_timeout,
                                                   args.poll_interval)
                except Invalid as error:
                    result["problems"].append(str(error))
            stored = stored_instances(server)
            folder = storage_dir(server)
            for real in files:
                if real.sop_uid not in stored:
                    result["problems"].append(f"{real.name}: not stored")
                    continue
                instance = stored[real.sop_uid]
                result["files"][real.name] = {"file_size": instance["size"],
                                              "disk_bytes": attachment_disk_bytes(server, folder, instance["id"]),
                                              "syntax": stored_syntax(server, instance["id"])}
            result["disk"] = disk_usage(folder)
            if config.storage_area:
                status, problems = check_compressed(server, count_instances(server))
                result["storage_status"] = status
                result["problems"] += problems
            _, log_lines = log_problems(server)
            if log_lines:
                result["log_problems"] = log_lines[:10]
        finally:
            stop_recording_crash(result, servers, server)
    except MEASUREMENT_ERRORS as error:
        record_failure(result, error)
    return result


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(round(fraction * (len(sorted_values) - 1))))]


def measure_readback_once(servers: Servers, config: Config, workload: Workload, reads: int, args,
                          rng: random.Random) -> dict:
    """Store the read-back set (REST, one client), restart Orthanc on the same storage (storage cache off anyway),
    then GET /instances/{id}/file once for each of `reads` different instances, one after another, timed."""
    result = {"config": config.key, "problems": [], "storage_cache": "MaximumStorageCacheSize 0 and a restart "
              "between storing and reading", "reads": 0}
    server = None
    try:
        server = servers.start(config, "readback", NO_STORAGE_CACHE)
        try:
            _, problems = send_rest(server.url, workload.bodies(), 1, args.request_timeout)
            if problems:
                raise Invalid(f"storing the read-back set: {problems[:3]}")
            if config.background:
                wait_drained(server, count_instances(server), args.drain_timeout, args.poll_interval)
            if config.storage_area:
                result["storage_status"], problems = check_compressed(server, count_instances(server))
                result["problems"] += problems
            result["disk"] = disk_usage(storage_dir(server))
            server = servers.restart(config, "readback", NO_STORAGE_CACHE)
            stored = stored_instances(server)
            uids = [uid for uid in workload.sop_uids if uid in stored]
            if len(uids) != len(workload.sop_uids):
                raise Invalid(f"{len(workload.sop_uids) - len(uids)} instances of the read-back set missing")
            rng.shuffle(uids)
            warm, measured = uids[:len(uids) - reads], uids[len(uids) - reads:]
            checked = set(rng.sample(measured, min(args.sample, len(measured))))
            samples, kept, failures = [], {}, []
            gzip_samples = []
            with requests.Session() as session:
                session.headers.update(IDENTITY)
                for uid in warm:  # connection, plugin code paths
                    session.get(f"{server.url}/instances/{stored[uid]['id']}/file", timeout=args.request_timeout)
                with CpuMeter(server.process.pid) as cpu:
                    for uid in measured:
                        started = time.perf_counter()
                        response = session.get(f"{server.url}/instances/{stored[uid]['id']}/file",
                                               timeout=args.request_timeout)
                        data = response.content
                        samples.append((time.perf_counter() - started) * 1000)
                        if response.status_code != 200:
                            failures.append(f"{uid}: HTTP {response.status_code} {response.text[:120]}")
                        elif response.headers.get("Content-Encoding", "identity") != "identity":
                            failures.append(f"{uid}: answered with Content-Encoding "
                                            f"{response.headers['Content-Encoding']}")
                        elif uid in checked:
                            kept[uid] = data
            with requests.Session() as session:  # for information: what a client that accepts gzip waits
                for uid in warm:
                    started = time.perf_counter()
                    response = session.get(f"{server.url}/instances/{stored[uid]['id']}/file",
                                           timeout=args.request_timeout)
                    response.content
                    gzip_samples.append((time.perf_counter() - started) * 1000)
            if gzip_samples:
                result["gzip_accepted_median_ms"] = round(statistics.median(gzip_samples), 3)
                result["gzip_content_encoding"] = response.headers.get("Content-Encoding", "identity")
            if failures:
                result["problems"].append(f"{len(failures)} of {len(measured)} reads failed, e.g. {failures[0]}")
            wrong, syntaxes = [], {}
            for uid, data in kept.items():
                dataset = dcmread(io.BytesIO(data))
                syntax = str(dataset.file_meta.TransferSyntaxUID)
                syntaxes[syntax] = syntaxes.get(syntax, 0) + 1
                if syntax not in config.served or str(dataset.SOPInstanceUID) != uid:
                    wrong.append(f"{uid}: syntax {syntax}, SOP {dataset.SOPInstanceUID}")
                elif syntax == EXPLICIT_LE:
                    with open(workload.path_of(uid), "rb") as handle:
                        if dataset.PixelData != pixel_data_of(handle.read()):
                            wrong.append(f"{uid}: PixelData read back differs from the PixelData sent")
            if wrong:
                result["problems"].append(f"{len(wrong)} of {len(kept)} files read back are wrong, e.g. {wrong[0]}")
            ordered = sorted(samples)
            result.update(reads=len(samples), warm_reads=len(warm), served_syntaxes_sample=syntaxes,
                          median_ms=round(statistics.median(ordered), 3), p90_ms=round(percentile(ordered, 0.9), 3),
                          mean_ms=round(statistics.fmean(ordered), 3), min_ms=round(ordered[0], 3),
                          max_ms=round(ordered[-1], 3), cpu=cpu.report(per=len(samples)),
                          bytes_per_read=round(sum(workload.sizes) / len(workload.sizes)))
            _, log_lines = log_problems(server)
            if log_lines:
                result["log_problems"] = log_lines[:10]
        finally:
            code = crashed_code(servers.current or server)
            if code is not None:
                result["crashed"] = code
            servers.stop()
    except Invalid as error:
        result["problems"].append(str(error))
        if isinstance(error, StartFailed):
            result["start_failed"] = str(error)
    except (RuntimeError, requests.RequestException, OSError, ValueError, KeyError) as error:
        result["problems"].append(f"{type(error).__name__}: {error}")
    return result


def measure_memory_once(servers: Servers, config: Config, big: Workload, warmup: Workload, args) -> dict:
    """Peak RSS of Orthanc while it stores one big multi-frame instance by REST, above its idle RSS just before."""
    result = {"config": config.key, "problems": [], "input_bytes": big.total_bytes}
    server = None
    try:
        server = servers.start(config, "memory")
        try:
            pid = server.process.pid
            if warmup.files:  # the code paths of a store, loaded once
                _, problems = send_rest(server.url, warmup.bodies()[:1], 1, args.request_timeout)
                if problems:
                    raise Invalid(f"warm-up failed: {problems[:3]}")
                if config.background:
                    wait_drained(server, count_instances(server), args.drain_timeout, args.poll_interval)
                delete_all_studies(server)
            body = big.bodies()[0]
            time.sleep(1.0)
            idle = proc_status_kib(pid, "VmRSS")
            with RssSampler(pid) as sampler:
                started = time.perf_counter()
                response = requests.post(server.url + "/instances", data=body, timeout=max(600, args.request_timeout),
                                         headers={"Content-Type": "application/dicom"})
                seconds = time.perf_counter() - started
                if config.background:  # the compression after the answer belongs to this instance's peak too
                    try:
                        result["drain"] = wait_drained(server, count_instances(server), args.drain_timeout,
                                                       args.poll_interval)
                    except Invalid as error:
                        result["problems"].append(str(error))
            del body
            status = response.json().get("Status") if response.status_code == 200 else None
            if response.status_code != 200 or status != "Success":
                result["problems"].append(f"POST of the {big.total_bytes / MB:.0f} MB instance: HTTP "
                                          f"{response.status_code}, Status {status!r}: {response.text[:200]}")
            peak = max(sampler.hwm or 0, sampler.peak) if sampler.hwm_reset else sampler.peak
            result.update(upload_seconds=round(seconds, 3), idle_rss_kib=idle, peak_rss_kib=peak,
                          vmhwm_kib=sampler.hwm, vmhwm_reset=sampler.hwm_reset, sampled_peak_rss_kib=sampler.peak,
                          rss_samples=sampler.samples,
                          peak_above_idle_mib=round((peak - idle) / 1024, 1) if idle is not None and peak else None)
            if not sampler.hwm_reset:
                result["note"] = "VmHWM could not be reset (clear_refs): sampled VmRSS only"
            if not server.alive():
                result["problems"].append("Orthanc stopped answering")
            else:
                stored = stored_instances(server)
                if big.sop_uids[0] not in stored:
                    result["problems"].append("the big instance is not stored")
                else:
                    result["served_syntax"] = stored_syntax(server, stored[big.sop_uids[0]]["id"])
                    if result["served_syntax"] not in config.served:
                        result["problems"].append(f"stored as {result['served_syntax']}, expected {sorted(config.served)}")
                if config.storage_area:
                    result["storage_status"], problems = check_compressed(server, count_instances(server))
                    result["problems"] += problems
                result["disk"] = disk_usage(storage_dir(server))
        finally:
            stop_recording_crash(result, servers, server)
    except MEASUREMENT_ERRORS as error:
        record_failure(result, error)
    return result


MEASUREMENT_ERRORS = (Invalid, RuntimeError, requests.RequestException, OSError, ValueError, KeyError)


def stop_recording_crash(result: dict, servers, server) -> None:
    """Stop the measurement's Orthanc, noting in the result whether it had crashed."""
    code = crashed_code(server)
    if code is not None:
        result["crashed"] = code
    servers.stop()


def record_failure(result: dict, error: Exception) -> None:
    """A measurement that could not finish: why, in its result (a start failure named as such)."""
    if isinstance(error, Invalid):
        result["problems"].append(str(error))
        if isinstance(error, StartFailed):
            result["start_failed"] = str(error)
    else:
        result["problems"].append(f"{type(error).__name__}: {error}")


def profile_in_process(path: str, repeat: int) -> dict:
    """The plugin's own compression code on one workload file, in this process (no Orthanc, one thread): where the time
    goes. The storage area's container (pack on create, restore on read) where it exists, else the older
    transcode(); the codecs' encode and decode alone; a cProfile of the HTJ2K write and read paths."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "plugin"))
    errors = []
    for container_name, codec_name in (("neuronova.storage.container", "neuronova.storage.codec"),
                                       ("neuronova.transcoder", "neuronova.codec")):
        try:
            container = importlib.import_module(container_name)
            htj2k = importlib.import_module(codec_name + ".htj2k")
            j2k = importlib.import_module(codec_name + ".j2k")
            break
        except Exception as error:  # the plugin is being edited by others: report, do not fail the run
            errors.append(f"{container_name}: {type(error).__name__}: {error}")
    else:
        return {"error": "cannot import the plugin's compression code: " + "; ".join(errors)}
    try:
        with open(path, "rb") as handle:
            data = handle.read()

        def timed(function, *arguments) -> float:
            function(*arguments)
            function(*arguments)
            samples = []
            for _ in range(repeat):
                started = time.perf_counter()
                function(*arguments)
                samples.append((time.perf_counter() - started) * 1000)
            return round(statistics.median(samples), 3)

        result: dict = {"module": container_name, "file_bytes": len(data), "paths_ms": {}}
        if hasattr(container, "pack") and hasattr(container, "PackSettings"):
            settings = {target: container.PackSettings(target=target) for target in ("htj2k", "j2k")}
            for target, value in settings.items():
                result["paths_ms"][f"pack {target} (create)"] = timed(container.pack, data, value)
                packed = container.pack(data, value).data
                if packed is None:
                    result.setdefault("notes", []).append(f"pack {target}: stored as received")
                    continue
                result["paths_ms"][f"restore {target} (read)"] = timed(container.restore, packed)
                result[f"packed_bytes_{target}"] = len(packed)
            write = lambda: container.pack(data, settings["htj2k"])  # noqa: E731
            packed = container.pack(data, settings["htj2k"]).data
            read = (lambda: container.restore(packed)) if packed is not None else None  # noqa: E731
        else:
            fields = {f.name for f in dataclasses.fields(container.TranscodeSettings)}
            extra = {"verify": True} if "verify" in fields else {}
            settings = {target: container.TranscodeSettings(target=target, **extra) for target in ("htj2k", "j2k")}
            for target, value in settings.items():
                result["paths_ms"][f"transcode {target}"] = timed(container.transcode, data, value)
            write = lambda: container.transcode(data, settings["htj2k"])  # noqa: E731
            read = None
        pixels = dcmread(io.BytesIO(data)).pixel_array
        bits = int(dcmread(io.BytesIO(data), stop_before_pixels=True).BitsStored)
        htj2k_stream, j2k_stream = htj2k.encode(pixels, bits), j2k.encode(pixels, bits)
        result["codec_ms"] = {"htj2k encode": timed(htj2k.encode, pixels, bits),
                              "htj2k decode": timed(htj2k.decode, htj2k_stream),
                              "j2k encode": timed(j2k.encode, pixels, bits),
                              "j2k decode": timed(j2k.decode, j2k_stream),
                              "pydicom full dcmread": timed(lambda: dcmread(io.BytesIO(data))),
                              "pydicom header dcmread": timed(lambda: dcmread(io.BytesIO(data),
                                                                               stop_before_pixels=True))}
        for label, function in (("write", write), ("read", read)):
            if function is None:
                continue
            profiler = cProfile.Profile()
            profiler.enable()
            for _ in range(repeat):
                function()
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
            result[f"cprofile_htj2k_{label}_top_tottime"] = [
                line.strip() for line in text.getvalue().splitlines()
                if line.strip() and ("(" in line or "tottime" in line)][:10]
        return result
    except Exception as error:
        return {"error": f"profiling {container_name}: {type(error).__name__}: {error}"}


# ---------------------------------------------------------------------------------------------------------
# Ratios against the targets


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def judged(value: float | None, op: str, target: float, **extra) -> dict:
    if value is None:
        verdict_ = "n/a"
    else:
        verdict_ = "PASS" if (value >= target if op == ">=" else value <= target) else "FAIL"
    return {"value": value, "op": op, "target": target, "verdict": verdict_, **extra}


def cell_name(transport: str, clients: int) -> str:
    return f"{TRANSPORT_LABEL[transport]} x{clients}"


def summarize(results: dict) -> dict:
    runs = {(r["config"], r["transport"], r["clients"]): r for r in results["throughput"]}

    def ok(run: dict | None) -> bool:
        return bool(run) and not run["problems"] and "unmeasurable" not in run

    def throughput(config: str, transport: str, clients: int) -> float | None:
        run = runs.get((config, transport, clients))
        return run.get("instances_per_s") if ok(run) else None

    def cpu_of(config: str, transport: str, clients: int) -> dict:
        run = runs.get((config, transport, clients)) or {}
        cpu = run.get("cpu") or {}
        return {"server_cpu_ms_per_instance": cpu.get("server_cpu_ms_per_instance"),
                "server_cores_used": cpu.get("server_cores_used"),
                "client_cpu_ms_per_instance": round(1000 * cpu["client_cpu_s"] / run["instances"], 2)
                if cpu.get("client_cpu_s") is not None else None,
                "other_processes_share_of_machine": cpu.get("other_processes_share_of_machine")}

    ratios: dict = {}
    configs = set(results["configs"])
    for mine, other, target, target_cells in (
            ("ingest", "plain", TARGET_INGEST_VS_PLAIN, {4}),
            ("ingest", "gdcm", TARGET_INGEST_VS_GDCM, {1, 4}),
            ("background", "plain", TARGET_BACKGROUND_VS_PLAIN, {4})):
        if not {mine, other} <= configs:
            continue
        for transport in TRANSPORTS:
            for clients in CLIENTS:
                value = ratio(throughput(mine, transport, clients), throughput(other, transport, clients))
                reference = runs.get((other, transport, clients), {})
                extra = {"kind": "throughput", "cells": [mine, other], "transport": transport, "clients": clients,
                         "cpu": {mine: cpu_of(mine, transport, clients), other: cpu_of(other, transport, clients)}}
                if "unmeasurable" in reference:
                    extra["note"] = f"{other} crashed: {reference['unmeasurable']}"
                if clients in target_cells:
                    entry = judged(value, ">=", target, **extra)
                    if "unmeasurable" in reference:
                        entry["verdict"] = f"{other} crashed"
                else:
                    entry = {"value": value, **extra}
                ratios[f"{mine}/{other} {cell_name(transport, clients)}"] = entry
    if "background" in configs:
        for transport in TRANSPORTS:
            for clients in CLIENTS:
                run = runs.get(("background", transport, clients))
                drain = (run or {}).get("drain") or {}
                value = drain.get("backlog_instances_per_s") if ok(run) else None
                extra = {"kind": "backlog", "unit": "instances/s",
                         "cpu": {"drain": drain.get("cpu"), "ingest": cpu_of("background", transport, clients)}}
                too_few = False
                if ok(run) and drain and value is None:
                    extra["note"] = "no backlog left at the end of the ingest (the workers kept up)"
                elif drain and drain.get("compressed_after_ingest", 0) < MIN_BACKLOG:
                    too_few = True
                    extra["note"] = (f"only {drain.get('compressed_after_ingest')} of {run['instances']} instances left "
                                     f"to compress at the end of the ingest: too few for a rate")
                if drain:
                    extra["end_to_end_instances_per_s"] = run.get("end_to_end_instances_per_s")
                entry = judged(value, ">=", TARGET_BACKLOG_PER_S, **extra)
                if too_few:
                    entry["verdict"] = "n/a"
                ratios[f"background backlog {cell_name(transport, clients)}"] = entry

    storage = {r["config"]: r for r in results["storage"]}
    for config in results["configs"]:
        run = storage.get(config)
        if run is None:
            continue
        good = not run["problems"] and "unmeasurable" not in run and len(run["files"]) == len(results["real_files"])
        disk = (run.get("disk") or {}).get("layout_bytes") if good else None
        value = ratio(run["received_bytes"], disk)
        extra = {"kind": "storage", "received_bytes": run["received_bytes"], "disk_bytes": disk}
        name = f"storage received/disk {config} (real files)"
        ratios[name] = judged(value, ">=", TARGET_STORAGE_RATIO, **extra) if config == "ingest" else \
            {"value": value, **extra}

    readback = {r["config"]: r for r in results["readback"]}
    for mine in ("ingest", "j2k"):
        if mine not in readback or "plain" not in readback:
            continue
        a, b = readback[mine], readback["plain"]
        valid = not a["problems"] and not b["problems"] and a.get("median_ms") is not None \
            and b.get("median_ms") is not None
        value = round(a["median_ms"] - b["median_ms"], 3) if valid else None
        extra = {"kind": "readback", "unit": "ms",
                 "p90_delta_ms": round(a["p90_ms"] - b["p90_ms"], 3) if valid else None,
                 "cpu": {mine: (a.get("cpu") or {}).get("server_cpu_ms_per_instance"),
                         "plain": (b.get("cpu") or {}).get("server_cpu_ms_per_instance")}}
        name = f"read-back median {mine} - plain"
        ratios[name] = judged(value, "<=", TARGET_READBACK_DELTA_MS, **extra) if mine == "ingest" else \
            {"value": value, **extra}

    memory = {r["config"]: r for r in results["memory"]}
    if "ingest" in memory and "plain" in memory:
        a, b = memory["ingest"], memory["plain"]
        valid = not a["problems"] and not b["problems"]
        value = ratio(a.get("peak_above_idle_mib"), b.get("peak_above_idle_mib")) if valid else None
        ratios["peak memory above idle ingest/plain"] = judged(
            value, "<=", TARGET_MEMORY_RATIO, kind="memory",
            mib={"ingest": a.get("peak_above_idle_mib"), "plain": b.get("peak_above_idle_mib")})
    return ratios


# ---------------------------------------------------------------------------------------------------------
# Report


def fmt(value, spec: str = ".1f", width: int = 0, none: str = "-") -> str:
    text = none if value is None else format(value, spec)
    return f"{text:>{width}}" if width else text


def print_report(results: dict) -> None:
    workload = results.get("workload") or {}
    print()
    git, end = results["git"], results.get("git_at_end", results["git"])
    changed = "" if end == git else f"; at the end {end['commit'][:10]}{' + local changes' if end['dirty'] else ''}"
    print(f"NeuroNova ingest benchmark, {results['started']}  ({results['machine']['cpus']} CPUs, "
          f"commit {git['commit'][:10]}{' + local changes' if git['dirty'] else ''}{changed})")
    if workload:
        print(f"Workload: {workload['instances']} x {workload['mean_bytes'] / MB:.3f} MB CT ({WORKLOAD_SOURCE}, new "
              f"UIDs, {workload['series']} series), {workload['total_bytes'] / MB:.1f} MB; fresh Orthanc per cell, "
              f"warmed up; C-STORE with TCP_NODELAY=1: {results['tcp_nodelay']}")
    for key, detail in results["config_details"].items():
        print(f"  {key:<12}{detail['title']}")
    if results.get("without_new_keys"):
        print("  (--without-new-keys: When/Background left out of the plugin's configuration)")
    columns = [(t, c) for t in TRANSPORTS for c in CLIENTS]
    runs = {(r["config"], r["transport"], r["clients"]): r for r in results["throughput"]}

    print()
    print("Ingest throughput: instances/s (MB/s of input); '!' = invalid cell, 'c' = Orthanc crashed in an earlier "
          "attempt; disk = the workload's bytes in the storage folders (input / disk)")
    print(f"{'configuration':<14}" + "".join(f"{cell_name(t, c):>17}" for t, c in columns)
          + f"{'disk MB':>10}{'ratio':>7}  served syntax")
    for config in results["configs"]:
        line = f"{config:<14}"
        disk, syntaxes, input_bytes = None, set(), None
        for transport, clients in columns:
            run = runs.get((config, transport, clients))
            if run and "unmeasurable" in run:
                line += f"{'CRASHED':>17}"
                continue
            if run and "start_failed" in run:
                line += f"{'NO START':>17}"
                continue
            if not run or "instances_per_s" not in run:
                line += f"{'-':>17}"
                continue
            mark = "!" if run["problems"] else "c" if run.get("crashes") else " "
            line += f"{run['instances_per_s']:>8.1f} ({run['mb_per_s']:>5.1f}){mark}"
            if disk is None and run.get("disk") and not run["problems"]:
                disk, input_bytes = run["disk"]["layout_bytes"], run["input_bytes"]
            syntaxes |= set(run.get("syntaxes", {}))
        line += fmt(disk / MB if disk else None, ".1f", 10) + fmt(input_bytes / disk if disk else None, ".2f", 7)
        line += "  " + ", ".join(SYNTAX_NAMES.get(s, s) for s in sorted(syntaxes))
        print(line)

    background = [runs.get(("background", t, c)) for t, c in columns]
    if any(background):
        print()
        print("Background: backlog after the ingest, drained (GET /neuronova/storage: pending 0, compressed_files = "
              "instances)")
        print(f"{'cell':<13}{'ingest/s':>9}{'pending':>9}{'left':>6}{'drain s':>9}{'backlog/s':>10}{'end-to-end/s':>13}"
              f"{'CPU ms/inst':>12}{'cores':>7}")
        for (transport, clients), run in zip(columns, background):
            if not run:
                continue
            drain = run.get("drain") or {}
            cpu = drain.get("cpu") or {}
            print(f"{cell_name(transport, clients):<13}{fmt(run.get('instances_per_s'), '.1f', 9)}"
                  f"{fmt(drain.get('pending_at_end_of_ingest'), 'd', 9)}{fmt(drain.get('compressed_after_ingest'), 'd', 6)}"
                  f"{fmt(drain.get('drain_seconds'), '.2f', 9)}{fmt(drain.get('backlog_instances_per_s'), '.1f', 10)}"
                  f"{fmt(run.get('end_to_end_instances_per_s'), '.1f', 13)}"
                  f"{fmt(cpu.get('server_cpu_ms_per_instance'), '.1f', 12)}{fmt(cpu.get('server_cores_used'), '.2f', 7)}")

    print()
    print("Server CPU per instance while ingesting (ms, Orthanc process; cores used) and other processes' share of "
          "the machine")
    print(f"{'configuration':<14}" + "".join(f"{cell_name(t, c):>22}" for t, c in columns))
    for config in results["configs"]:
        line = f"{config:<14}"
        for transport, clients in columns:
            cpu = (runs.get((config, transport, clients)) or {}).get("cpu")
            if not cpu:
                line += f"{'-':>22}"
                continue
            share = cpu["other_processes_share_of_machine"]
            line += (f"{cpu['server_cpu_ms_per_instance']:>8.1f} {fmt(cpu.get('server_cores_used'), '.2f', 5)}c"
                     f" {f'({share:.0%})' if share is not None else '':>6}")
        print(line)

    plugin_runs = [r for r in results["throughput"] if (r.get("plugin_history") or {}).get("duration_ms_median")]
    if plugin_runs:
        print()
        print("Plugin pipeline per instance (GET /neuronova/history duration_ms median / p90), pipelines in flight")
        for run in plugin_runs:
            history = run["plugin_history"]
            print(f"  {run['config']:<12}{cell_name(run['transport'], run['clients']):<13}"
                  f"{history['duration_ms_median']:>6.1f} / {history['duration_ms_p90']:>6.1f} ms   "
                  f"in flight {history.get('pipelines_in_flight_mean') or 0:>4.2f}")

    profile = results.get("in_process_profile") or {}
    if "codec_ms" in profile:
        print()
        print(f"In-process ({profile['module']}, no Orthanc, one thread) on one workload file, median ms:")
        print("  " + ", ".join(f"{k} {v:.1f}" for k, v in profile["paths_ms"].items()))
        print("  parts: " + ", ".join(f"{k} {v:.1f}" for k, v in profile["codec_ms"].items()))
    elif profile:
        print(f"\nIn-process profile skipped: {profile.get('error')}")

    if results["readback"]:
        print()
        print("Read-back: GET /instances/{id}/file, each of N different slices once, one client, storage cache off, "
              "Orthanc restarted after storing")
        print(f"{'configuration':<14}{'reads':>6}{'median ms':>11}{'p90 ms':>9}{'mean ms':>9}{'max ms':>9}"
              f"{'server CPU ms/read':>20}{'gzip ms':>9}  served")
        for run in results["readback"]:
            syntaxes = ", ".join(SYNTAX_NAMES.get(s, s) for s in sorted(run.get("served_syntaxes_sample", {})))
            print(f"{run['config']:<14}{run.get('reads', 0):>6}{fmt(run.get('median_ms'), '.2f', 11)}"
                  f"{fmt(run.get('p90_ms'), '.2f', 9)}{fmt(run.get('mean_ms'), '.2f', 9)}{fmt(run.get('max_ms'), '.2f', 9)}"
                  f"{fmt((run.get('cpu') or {}).get('server_cpu_ms_per_instance'), '.2f', 20)}"
                  f"{fmt(run.get('gzip_accepted_median_ms'), '.1f', 9)}  {syntaxes}"
                  f"{'  INVALID: ' + run['problems'][0][:100] if run['problems'] else ''}")

    if results["memory"]:
        print()
        big = results.get("big_instance") or {}
        print(f"Peak memory: one {big.get('bytes', 0) / MB:.0f} MB instance ({big.get('frames')} frames 512x512 16-bit) "
              f"by REST; Orthanc's peak RSS (VmHWM reset before, VmRSS sampled) above its idle RSS")
        print(f"{'configuration':<14}{'idle MiB':>10}{'peak MiB':>10}{'above idle':>12}{'upload s':>10}  disk MB")
        for run in results["memory"]:
            idle, peak = run.get("idle_rss_kib"), run.get("peak_rss_kib")
            disk = (run.get("disk") or {}).get("layout_bytes")
            print(f"{run['config']:<14}{fmt(idle / 1024 if idle else None, '.1f', 10)}"
                  f"{fmt(peak / 1024 if peak else None, '.1f', 10)}{fmt(run.get('peak_above_idle_mib'), '.1f', 12)}"
                  f"{fmt(run.get('upload_seconds'), '.2f', 10)}  {fmt(disk / MB if disk else None, '.1f')}"
                  f"{'  INVALID: ' + run['problems'][0][:100] if run['problems'] else ''}")

    if results["storage"]:
        print()
        print("Storage of real files: bytes on disk (the instance's attachments in the storage folders); "
              "ratio = received / disk; * = served in another syntax than expected")
        configs = [r["config"] for r in results["storage"]]
        storage = {r["config"]: r for r in results["storage"]}
        served = {k: set(v["served"]) for k, v in results["config_details"].items()}
        print(f"{'file':<36}{'input':>10}" + "".join(f"{c:>22}" for c in configs))
        for real in results["real_files"]:
            line = f"{real['name'][:35]:<36}{real['size']:>10}"
            for config in configs:
                item = storage[config]["files"].get(real["name"])
                if not item:
                    line += f"{'CRASHED' if 'unmeasurable' in storage[config] else '-':>22}"
                    continue
                mark = "*" if item["syntax"] not in served[config] else " "
                disk = item.get("disk_bytes")
                line += (f"{disk:>12} {real['size'] / disk:>6.2f}x{mark} " if disk else f"{'?':>20}{mark} ")
            print(line + f"  {real['description']}")
        input_total = sum(r["size"] for r in results["real_files"])
        line = f"{'TOTAL (all files in the layout)':<36}{input_total:>10}"
        for config in configs:
            disk = (storage[config].get("disk") or {}).get("layout_bytes")
            line += f"{disk:>12} {input_total / disk:>6.2f}x  " if disk else f"{'-':>22}"
        print(line)

    print()
    print("Ratios and targets")
    for name, entry in results["ratios"].items():
        value = entry["value"]
        unit = entry.get("unit", "")
        text = "n/a" if value is None else f"{value:.3f}"
        target = f"   target {entry['op']} {entry['target']:g} {unit}: {entry['verdict']}".rstrip() \
            if "target" in entry else ""
        if "target" in entry:
            target = f"   target {entry['op']} {entry['target']:g}{' ' + unit if unit else ''}: {entry['verdict']}"
        note = f"   ({entry['note']})" if entry.get("note") else ""
        print(f"  {name:<44}{text:>9}{target}{note}")

    missed = {name: entry for name, entry in results["ratios"].items() if entry.get("verdict") == "FAIL"}
    if missed:
        print()
        print("Where the CPU goes, for the targets missed (Orthanc process CPU from /proc/<pid>/stat utime+stime)")
        for name, entry in missed.items():
            kind = entry.get("kind")
            if kind == "throughput":
                parts = []
                for config, cpu in entry["cpu"].items():
                    parts.append(f"{config} {fmt(cpu['server_cpu_ms_per_instance'], '.1f')} ms/instance on "
                                 f"{fmt(cpu['server_cores_used'], '.2f')} cores (client {fmt(cpu['client_cpu_ms_per_instance'], '.1f')}"
                                 f" ms, others {fmt(cpu['other_processes_share_of_machine'], '.0%')})")
                a, b = (entry["cpu"][c]["server_cpu_ms_per_instance"] for c in entry["cells"])
                extra = f"; difference {a - b:+.1f} ms/instance" if a is not None and b is not None else ""
                print(f"  {name}: " + "; ".join(parts) + extra)
            elif kind == "backlog":
                drain = entry["cpu"].get("drain") or {}
                print(f"  {name}: {fmt(drain.get('server_cpu_ms_per_instance'), '.1f')} ms of server CPU per instance "
                      f"compressed after the ingest, on {fmt(drain.get('server_cores_used'), '.2f')} cores "
                      f"(Background.Threads {results['arguments']['background_threads']})")
            elif kind == "readback":
                print(f"  {name}: server CPU per read " + ", ".join(
                    f"{config} {fmt(value, '.2f')} ms" for config, value in entry["cpu"].items()))
            elif kind == "memory":
                print(f"  {name}: peak above idle " + ", ".join(
                    f"{config} {fmt(value, '.1f')} MiB" for config, value in entry["mib"].items()))
            elif kind == "storage":
                print(f"  {name}: {entry['received_bytes']} bytes received, {entry['disk_bytes']} on disk")

    print()
    unmeasurable = [f"{r['config']} {cell_name(r['transport'], r['clients'])}: {r['unmeasurable']}"
                    for r in results["throughput"] if "unmeasurable" in r]
    unmeasurable += [f"{r['config']} {what}: {r['unmeasurable']}" for what in ("storage", "readback", "memory")
                     for r in results[what] if "unmeasurable" in r]
    if results["valid"]:
        print("RUN VALID: in every figure shown, every POST answered 200/Success, every storescu exited 0, every "
              "instance was stored (and, for the NeuroNova configurations, compressed on disk).")
        if unmeasurable:
            print("Figures missing because the reference Orthanc (no NeuroNova plugin) crashed under that load:")
            for line in unmeasurable:
                print(f"  - {line}")
    else:
        print("RUN INVALID: the figures above are not to be trusted:")
        for problem in results["problems"][:30]:
            print(f"  - {problem}")
    for warning in results.get("warnings", [])[:20]:
        print(f"  warning: {warning}")
    print(f"\nJSON: {results['json_path']}")


def git_state() -> dict:
    def run(*command: str) -> str:
        try:
            return subprocess.run(["git", *command], cwd=REPO_ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD") or "unknown",
            "dirty": bool(run("status", "--porcelain", "--", "plugin", "orthanc.json"))}


def orthanc_version() -> str:
    try:
        output = subprocess.run(["Orthanc", "--version"], capture_output=True, text=True, timeout=10).stdout
        return output.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    all_keys = [c.key for c in make_configs(1)]
    parser.add_argument("--instances", type=int, default=None, help="workload size (default 200; --quick: 16)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: few instances, 16 reads, a 26 MB multi-frame, short warm-up")
    parser.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                        help=f"comma-separated subset of {', '.join(all_keys)} (default {','.join(DEFAULT_CONFIGS)})")
    parser.add_argument("--series", type=int, default=4, help="series in the workload study (default 4)")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up instances per server (default 8)")
    parser.add_argument("--sample", type=int, default=10,
                        help="stored files re-read with pydicom per cell (default 10)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each cell this many times (fresh Orthanc each) and keep the best (default 1)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="tries per measurement when Orthanc crashes under the load (default 3)")
    parser.add_argument("--background-threads", type=int, default=2,
                        help="NeuroNova.Transcoding.Background.Threads of the background configuration (default 2, the plugin's)")
    parser.add_argument("--drain-timeout", type=float, default=600,
                        help="seconds to wait for the background backlog to drain (default 600)")
    parser.add_argument("--poll-interval", type=float, default=0.05,
                        help="seconds between polls of GET /neuronova/storage while draining (default 0.05)")
    parser.add_argument("--reads", type=int, default=None,
                        help="different slices read back per configuration (default 100; --quick: 16)")
    parser.add_argument("--big-frames", type=int, default=None,
                        help="frames of 512x512 16-bit in the memory instance (default 200 = 105 MB; --quick: 50)")
    parser.add_argument("--stock-tcp", action="store_true",
                        help="do not set TCP_NODELAY=1 for Orthanc and storescu (DCMTK then leaves Nagle on: "
                             "~40 ms stall per C-STORE instance)")
    parser.add_argument("--no-throughput", action="store_true", help="skip the ingest throughput cells")
    parser.add_argument("--no-storage", action="store_true", help="skip the real-file storage measurement")
    parser.add_argument("--no-readback", action="store_true", help="skip the read-back latency measurement")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process transcoder profile")
    parser.add_argument("--without-new-keys", action="store_true",
                        help="leave When/Background out of the plugin's configuration: to exercise the bench "
                             "against a plugin that predates the storage area (background then means ingest)")
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds per POST (default 120)")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds per storescu cell (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage folders and Orthanc logs")
    parser.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args()
    if args.instances is None:
        args.instances = 16 if args.quick else 200
    if args.reads is None:
        args.reads = 16 if args.quick else 100
    if args.big_frames is None:
        args.big_frames = 50 if args.quick else 200
    if args.quick:
        args.warmup = min(args.warmup, 4)
        args.sample = min(args.sample, 4)
    if args.repeat < 1 or args.attempts < 1 or args.background_threads < 1:
        parser.error("--repeat, --attempts and --background-threads must be at least 1")
    if args.instances < 4:
        parser.error("--instances must be at least 4 (4 clients)")
    if args.reads < 2 or args.big_frames < 1:
        parser.error("--reads must be at least 2, --big-frames at least 1")
    all_configs = make_configs(args.background_threads)
    wanted = [key.strip() for key in args.configs.split(",") if key.strip()]
    unknown = set(wanted) - set(all_keys)
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}")
    configs = [c for c in all_configs if c.key in wanted]
    by_key = {c.key: c for c in configs}

    if shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc is not installed (Debian package 'orthanc'): run make system-packages")
    storescu = find_storescu()
    if "gdcm" in by_key and not os.path.exists(GDCM_PLUGIN):
        raise SystemExit(f"the GDCM plugin {GDCM_PLUGIN} is missing (Debian package 'orthanc-gdcm')")

    if not args.stock_tcp:
        # DCMTK (Orthanc's DICOM side and storescu) leaves Nagle's algorithm on unless TCP_NODELAY is set in the
        # environment: each C-STORE then waits ~40 ms for a delayed ACK, which would hide the server's own cost.
        os.environ["TCP_NODELAY"] = "1"

    # SIGTERM/SIGHUP take the same clean way out as Ctrl-C: the running Orthanc is stopped by `finally`.
    def interrupted(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGHUP, interrupted)

    with open(os.path.join(REPO_ROOT, "orthanc.json"), encoding="utf-8") as handle:
        orthanc_json = json.load(handle)
    started = datetime.datetime.now()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    root = tempfile.mkdtemp(prefix="neuronova-bench-")
    servers = Servers(os.path.join(root, "servers"), args.keep, args.without_new_keys)
    rng = random.Random(1)
    results: dict = {
        "started": started.isoformat(timespec="seconds"), "arguments": vars(args),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": os.getloadavg()},
        "orthanc": orthanc_version(), "storescu": storescu, "git": git_state(),
        "tcp_nodelay": not args.stock_tcp, "without_new_keys": args.without_new_keys,
        "orthanc_json_neuronova": orthanc_json.get("NeuroNova"),
        "configs": [c.key for c in configs],
        "config_details": {c.key: {"title": c.title, "neuronova_plugin": c.plugin,
                                   "overrides": {**COMMON_OVERRIDES, **c.overrides}, "served": sorted(c.served),
                                   "storage_area": c.storage_area, "background": c.background}
                           for c in configs},
        "targets": {"ingest/plain x4": TARGET_INGEST_VS_PLAIN, "ingest/gdcm every cell": TARGET_INGEST_VS_GDCM,
                    "background/plain x4": TARGET_BACKGROUND_VS_PLAIN, "backlog instances/s": TARGET_BACKLOG_PER_S,
                    "storage received/disk ingest": TARGET_STORAGE_RATIO,
                    "read-back median delta ms": TARGET_READBACK_DELTA_MS,
                    "peak memory ingest/plain": TARGET_MEMORY_RATIO},
        "throughput": [], "storage": [], "readback": [], "memory": [], "problems": [], "warnings": [],
        "not_started": {},
    }
    not_started: dict[str, str] = results["not_started"]

    def note_start(config: Config, run: dict) -> None:
        if "start_failed" in run and config.key not in not_started:
            not_started[config.key] = run["start_failed"]
            print(f"  {config.key}: Orthanc does not start with this configuration; its other measurements are "
                  f"skipped: {run['start_failed'][:300]}", flush=True)

    def status_line(run: dict) -> str:
        if "unmeasurable" in run:
            return f"CRASHED: {run['unmeasurable']}"
        return f"INVALID: {run['problems'][0][:200]}" if run["problems"] else "ok"

    try:
        print(f"Writing the workloads to {root} ...", flush=True)
        workload = make_workload(os.path.join(root, "workload"), args.instances, args.series, "bench")
        warmup = make_workload(os.path.join(root, "warmup"), args.warmup, 1, "warmup")
        readback_set = make_workload(os.path.join(root, "readback"), args.reads + 5, 1, "readback")
        bodies = workload.bodies()
        results["workload"] = {"source": WORKLOAD_SOURCE, "instances": len(workload.files), "series": args.series,
                               "total_bytes": workload.total_bytes,
                               "mean_bytes": workload.total_bytes / len(workload.files),
                               "warmup_instances": args.warmup, "readback_instances": len(readback_set.files)}
        reals, notes = real_files()
        results["real_files"] = [{"name": r.name, "size": r.size, "description": r.description} for r in reals]
        results["warnings"] += notes

        if not args.no_profile:
            print("In-process transcoder profile ...", flush=True)
            results["in_process_profile"] = profile_in_process(workload.files[0], 10 if args.quick else 30)

        for config in configs:
            if not args.no_throughput:
                for transport in TRANSPORTS:
                    for clients in CLIENTS:
                        if config.key in not_started:
                            continue
                        print(f"  {config.key:<12}{TRANSPORT_LABEL[transport]:>8} x{clients} ... ", end="", flush=True)
                        run = measure(servers, config, transport, clients, workload, bodies, warmup, storescu, args,
                                      rng)
                        results["throughput"].append(run)
                        for crash in run.get("crashes", []):
                            print(f"[{crash[:90]}] ", end="", flush=True)
                        if "unmeasurable" in run:
                            print(f"CRASHED: {run['unmeasurable']}", flush=True)
                        elif "instances_per_s" in run:
                            drain = run.get("drain") or {}
                            backlog = (f", backlog {drain.get('compressed_after_ingest')} compressed in "
                                       f"{drain.get('drain_seconds')} s ({drain.get('backlog_instances_per_s')}/s)"
                                       if drain else "")
                            print(f"{run['instances_per_s']:.1f} inst/s, {run['mb_per_s']:.1f} MB/s{backlog}"
                                  f"{'  INVALID: ' + run['problems'][0][:200] if run['problems'] else ''}", flush=True)
                        else:
                            print(f"FAILED: {run['problems'][0][:300] if run['problems'] else '?'}", flush=True)
                        note_start(config, run)
            if not args.no_storage and reals and config.key not in not_started:
                print(f"  {config.key:<12} real files ... ", end="", flush=True)
                run = with_retries(config, args.attempts, lambda: measure_storage_once(servers, config, reals, args))
                results["storage"].append(run)
                print(status_line(run), flush=True)
                note_start(config, run)

        for key in ("plain", "ingest", "j2k"):
            if args.no_readback or key not in by_key or key in not_started:
                continue
            print(f"  {key:<12} read-back x{args.reads} ... ", end="", flush=True)
            run = with_retries(by_key[key], args.attempts,
                               lambda: measure_readback_once(servers, by_key[key], readback_set, args.reads, args, rng))
            results["readback"].append(run)
            print(f"median {run.get('median_ms')} ms, p90 {run.get('p90_ms')} ms; {status_line(run)}", flush=True)
            note_start(by_key[key], run)

        memory_keys = [k for k in ("plain", "ingest") if k in by_key and k not in not_started]
        if not args.no_memory and memory_keys:
            print(f"Writing the {args.big_frames}-frame instance ...", flush=True)
            big = make_big_instance(os.path.join(root, "big"), args.big_frames)
            results["big_instance"] = {"frames": args.big_frames, "bytes": big.total_bytes,
                                       "sop_class": MULTIFRAME_GRAYSCALE_WORD_SC}
            for key in memory_keys:
                print(f"  {key:<12} peak memory, {big.total_bytes / MB:.0f} MB instance ... ", end="", flush=True)
                run = with_retries(by_key[key], args.attempts,
                                   lambda: measure_memory_once(servers, by_key[key], big, warmup, args))
                results["memory"].append(run)
                print(f"{run.get('peak_above_idle_mib')} MiB above idle; {status_line(run)}", flush=True)
                note_start(by_key[key], run)
            shutil.rmtree(os.path.join(root, "big"), ignore_errors=True)
    except KeyboardInterrupt as error:
        results["problems"].append(f"interrupted ({error or 'Ctrl-C'})")
    finally:
        servers.stop()
        if args.keep:
            print(f"Kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    for what in ("throughput", "storage", "readback", "memory"):
        for run in results[what]:  # one failure can be reported by two checks (e.g. a missing route)
            run["problems"] = list(dict.fromkeys(run["problems"]))
    for key, reason in not_started.items():
        results["problems"].append(f"{key}: not measured: {reason}")
    for run in results["throughput"]:
        cell = f"{run['config']} {cell_name(run['transport'], run['clients'])}"
        if "start_failed" not in run:
            results["problems"] += [f"{cell}: {p}" for p in run["problems"]]
        results["warnings"] += [f"{cell} log: {line}" for line in run.get("log_problems", [])[:3]]
        later = not run["problems"] and "unmeasurable" not in run
        results["warnings"] += [f"{cell}: {crash}{' (figure from a later attempt)' if later else ''}"
                                for crash in run.get("crashes", [])]
    for what in ("storage", "readback", "memory"):
        for run in results[what]:
            if "start_failed" not in run:
                results["problems"] += [f"{run['config']} {what}: {p}" for p in run["problems"]]
            results["warnings"] += [f"{run['config']} {what}: {crash}" for crash in run.get("crashes", [])]
            results["warnings"] += [f"{run['config']} {what} log: {line}" for line in run.get("log_problems", [])[:3]]
    served = {c.key: c.served for c in configs}
    for run in results["storage"]:
        for name, item in run["files"].items():
            if item["syntax"] not in served[run["config"]]:
                results["warnings"].append(f"{run['config']}: {name} served as {item['syntax']}")
    if not args.no_throughput:
        expected_cells = (len(configs) - len(not_started)) * len(TRANSPORTS) * len(CLIENTS)
        measured = len([r for r in results["throughput"] if "start_failed" not in r])
        if measured != expected_cells:
            results["problems"].append(f"only {measured} of {expected_cells} throughput cells measured")
    results["valid"] = not results["problems"]
    results["ratios"] = summarize(results) if "real_files" in results else {}
    results["finished"] = datetime.datetime.now().isoformat(timespec="seconds")
    results["git_at_end"] = git_state()  # each Orthanc loads the plugin afresh: edits during a run count

    os.makedirs(args.results_dir, exist_ok=True)
    json_path = os.path.join(args.results_dir, f"{stamp}{'-quick' if args.quick else ''}.json")
    results["json_path"] = os.path.relpath(json_path, REPO_ROOT)
    with open(json_path, "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=2, default=str)
    print_report(results)
    return 0 if results["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
