#!/usr/bin/env python3
"""Ingest benchmark: what the NeuroNova plugin costs, and saves, against plain Orthanc and GDCM.

One run, on the same files, one Orthanc at a time (never two, so they never share the cores):
  plain           Orthanc 1.10.1 with the project's orthanc.json, Python plugin removed
  htj2k           Orthanc + the NeuroNova plugin, Transcoding.Target "htj2k", Verify true
  j2k             Orthanc + the NeuroNova plugin, Transcoding.Target "j2k", Verify true
  gdcm            Orthanc + the GDCM plugin, IngestTranscoding 1.2.840.10008.1.2.4.90, no NeuroNova plugin
  htj2k-noverify  as htj2k with Verify false (the cost of verification)
For each, ingest throughput (instances/s, MB/s) over REST POST /instances and over C-STORE (dcmtk
storescu), with 1 and 4 concurrent clients, each measurement on a fresh Orthanc with a fresh storage
folder, warmed up first; the stored bytes and the stored transfer syntax are checked after each.
Then the storage of real CT/MR/CR files from pydicom-data per configuration.

    .venv/bin/python bench/ingest_bench.py [--instances N] [--quick] [--configs plain,htj2k,...]

Results: a table on stdout, JSON in bench/results/<timestamp>.json. Exit status 1 when the run is
invalid (a POST not answered 200/Success, a storescu exit code not 0, a missing or wrongly encoded
instance, a server that died); the table then says so.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

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
GDCM_PLUGIN = "/usr/share/orthanc/plugins/libOrthancGdcm.so"
WORKLOAD_SOURCE = "693_UNCR.dcm"  # 512 x 512 16-bit CT, ~0.5 MB, Explicit VR Little Endian
# Real uncompressed CT / MR / CR from pydicom-data (SOP Instance UIDs left as they are).
REAL_FILES = ["693_UNCR.dcm", "MR2_UNCR.dcm", "CT_small.dcm", "MR_small.dcm", "emri_small.dcm", "RG1_UNCR.dcm",
              "RG3_UNCR.dcm", "eCT_Supplemental.dcm", "MR-SIEMENS-DICOM-WithOverlays.dcm"]
CLIENTS = (1, 4)
TRANSPORTS = ("rest", "cstore")
TRANSPORT_LABEL = {"rest": "REST", "cstore": "C-STORE"}
MB = 1e6

# Targets of issue 3 ("Speed"), on 0.5 MB CT with 4 clients; storage on the real CT/MR files.
TARGET_VS_PLAIN = 0.8
TARGET_VS_GDCM = 3.5
TARGET_STORAGE_RATIO = 2.5
TARGET_VS_GDCM_BYTES = 0.10


@dataclass(frozen=True)
class Config:
    key: str
    title: str
    plugin: bool
    overrides: dict
    syntax: str  # the transfer syntax every stored workload instance must have


CONFIGS = [
    Config("plain", "Orthanc 1.10.1, no NeuroNova plugin (stores as received)", False, {}, EXPLICIT_LE),
    Config("htj2k", "NeuroNova plugin, Target htj2k, Verify on", True,
           {"NeuroNova": {"Transcoding": {"Target": "htj2k", "Verify": True}}}, HTJ2K_LOSSLESS),
    Config("j2k", "NeuroNova plugin, Target j2k, Verify on", True,
           {"NeuroNova": {"Transcoding": {"Target": "j2k", "Verify": True}}}, J2K_LOSSLESS),
    Config("gdcm", "GDCM plugin, IngestTranscoding J2K lossless, no NeuroNova plugin", False,
           {"IngestTranscoding": J2K_LOSSLESS}, J2K_LOSSLESS),
    Config("htj2k-noverify", "NeuroNova plugin, Target htj2k, Verify off", True,
           {"NeuroNova": {"Transcoding": {"Target": "htj2k", "Verify": False}}}, HTJ2K_LOSSLESS),
]
COMMON_OVERRIDES = {"StorageCompression": False}


class Invalid(Exception):
    """Something that makes a measurement meaningless (not merely slow)."""


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


def make_workload(folder: str, count: int, series: int, name: str) -> Workload:
    """`count` copies of 693_UNCR, each with a new SOP Instance UID, in one new study of `series` series."""
    os.makedirs(folder, exist_ok=True)
    source = get_testdata_file(WORKLOAD_SOURCE)
    if source is None:
        raise SystemExit(f"pydicom-data has no {WORKLOAD_SOURCE}: install pydicom-data (requirements-dev.txt)")
    dataset = dcmread(source)
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
# CPU accounting: is the machine busy with something else while we measure?

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
        self.server, self.own, self.busy = process_cpu_seconds(self.pid), own_cpu_seconds(), system_busy_seconds()
        return self

    def __exit__(self, *exc):
        self.server = process_cpu_seconds(self.pid) - self.server
        self.own = own_cpu_seconds() - self.own
        self.busy = system_busy_seconds() - self.busy

    def report(self, seconds: float) -> dict:
        cores = os.cpu_count() or 1
        foreign = max(0.0, self.busy - self.server - self.own)
        return {"server_cpu_s": round(self.server, 3), "client_cpu_s": round(self.own, 3),
                "system_busy_cpu_s": round(self.busy, 3), "other_processes_cpu_s": round(foreign, 3),
                "other_processes_share_of_machine": round(foreign / (cores * seconds), 3) if seconds > 0 else None}


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


class Servers:
    """Starts one Orthanc at a time and makes sure it is stopped, whatever happens."""

    def __init__(self, root: str, keep: bool):
        self.root, self.keep, self.current, self.counter = root, keep, None, 0

    def start(self, config: Config, label: str) -> OrthancServer:
        assert self.current is None, "never two Orthancs at once"
        self.counter += 1
        data_dir = os.path.join(self.root, f"{self.counter:02d}_{config.key}_{label}")
        overrides = {**COMMON_OVERRIDES, **config.overrides}
        server = OrthancServer(data_dir, overrides=overrides, plugin=config.plugin, verbose=False)
        if not config.plugin and config.key == "gdcm" and GDCM_PLUGIN not in server.config.get("Plugins", []):
            server.config["Plugins"] = [*server.config.get("Plugins", []), GDCM_PLUGIN]
        self.current = server
        server.start(timeout=120)
        return server

    def stop(self) -> None:
        server, self.current = self.current, None
        if server is None:
            return
        server.stop()
        if not self.keep:
            shutil.rmtree(server.data_dir, ignore_errors=True)


KNOWN_HTJ2K_ERROR = f"Unsupported transfer syntax: {HTJ2K_LOSSLESS}"


def log_problems(server: OrthancServer) -> tuple[int, list[str]]:
    """(count of the error Orthanc 1.10 logs for every HTJ2K instance it stores, because DCMTK does not know the
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
    """SOP Instance UID -> {id, size (the stored DICOM file, StorageCompression off)}."""
    response = server.get("/instances?expand")
    response.raise_for_status()
    return {item["MainDicomTags"].get("SOPInstanceUID", ""): {"id": item["ID"], "size": int(item["FileSize"])}
            for item in response.json()}


def stored_syntax(server: OrthancServer, instance_id: str) -> str:
    header = server.get(f"/instances/{instance_id}/header").json()
    return header.get("0002,0010", {}).get("Value", "").strip("\0 ")


def file_syntax(server: OrthancServer, instance_id: str) -> tuple[str, str, int]:
    """(transfer syntax, SOP Instance UID, length) of the stored file itself, read with pydicom."""
    data = server.get(f"/instances/{instance_id}/file").content
    dataset = dcmread(io.BytesIO(data), stop_before_pixels=True)
    return str(dataset.file_meta.TransferSyntaxUID), str(dataset.SOPInstanceUID), len(data)


def check_stored(server: OrthancServer, workload: Workload, expected_syntax: str, sample: int,
                 rng: random.Random) -> tuple[dict, list[str]]:
    problems = []
    stored = stored_instances(server)
    missing = [uid for uid in workload.sop_uids if uid not in stored]
    extra = len(stored) - (len(workload.sop_uids) - len(missing))
    if missing:
        problems.append(f"{len(missing)} of {len(workload.sop_uids)} instances not stored")
    if extra:
        problems.append(f"{extra} unexpected instances stored")
    present = [uid for uid in workload.sop_uids if uid in stored]
    stored_bytes = sum(stored[uid]["size"] for uid in present)
    syntaxes: dict[str, int] = {}
    for uid in present:  # every instance, from its stored file meta
        syntax = stored_syntax(server, stored[uid]["id"])
        syntaxes[syntax] = syntaxes.get(syntax, 0) + 1
    if set(syntaxes) - {expected_syntax}:
        problems.append(f"stored transfer syntaxes {syntaxes}, expected only {expected_syntax}")
    checked, wrong = 0, []
    for uid in rng.sample(present, min(sample, len(present))):  # and a sample of whole files, read with pydicom
        syntax, sop, length = file_syntax(server, stored[uid]["id"])
        checked += 1
        if syntax != expected_syntax or sop != uid or length != stored[uid]["size"]:
            wrong.append(f"{uid}: syntax {syntax}, SOP {sop}, {length} bytes (expected {expected_syntax}, "
                         f"the same SOP, {stored[uid]['size']} bytes)")
    if wrong:
        problems.append(f"{len(wrong)} of {checked} stored files read with pydicom are wrong, e.g. {wrong[0]}")
    statistics_ = server.get("/statistics").json()
    return {"stored_instances": len(present), "stored_bytes": stored_bytes,
            "total_disk_size": int(statistics_.get("TotalDiskSize", 0)), "syntaxes": syntaxes,
            "files_checked_with_pydicom": checked}, problems


def plugin_history(server: OrthancServer, uids: set[str]) -> dict | None:
    response = server.get("/neuronova/history", params={"limit": 10000})
    if response.status_code != 200:
        return None
    entries = [entry for entry in response.json().get("entries", []) if entry.get("sop_instance_uid") in uids]
    durations = sorted(float(entry["duration_ms"]) for entry in entries)
    if not durations:
        return {"entries": 0}
    # Each entry's time is stamped when its pipeline ends: [end - duration, end] is when it ran. The sum of the
    # durations over the span is how many pipelines ran at once on average (1.0 = strictly one after another).
    ends = [datetime.datetime.fromisoformat(entry["time"]).timestamp() * 1000 for entry in entries]
    starts = [end - float(entry["duration_ms"]) for end, entry in zip(ends, entries)]
    span = max(ends) - min(starts)
    return {"entries": len(entries), "paths": sorted({entry.get("path", "") for entry in entries}),
            "actions": sorted({entry.get("action", "") for entry in entries}),
            "errors": sorted({entry["error"] for entry in entries if entry.get("error")})[:5],
            "duration_ms_mean": round(statistics.fmean(durations), 2),
            "duration_ms_median": round(statistics.median(durations), 2),
            "duration_ms_p90": round(durations[int(0.9 * (len(durations) - 1))], 2),
            "duration_ms_max": round(durations[-1], 2),
            "pipelines_in_flight_mean": round(sum(durations) / span, 2) if span > 0 else None}


# ---------------------------------------------------------------------------------------------------------
# Measurements


def warm_up(server: OrthancServer, warmup: Workload, storescu: str, timeout: float) -> None:
    """A few instances by REST and one association, then an empty server again. One client only: Orthanc with
    GDCM ingest transcoding can crash under concurrent REST uploads, and that belongs to the measurement."""
    if not warmup.files:
        return
    half = max(1, len(warmup.files) // 2)
    bodies = warmup.bodies()
    _, problems = send_rest(server.url, bodies[:half], 1, timeout)
    if len(warmup.files) > half:
        _, more = send_storescu(storescu, server.dicom_port, server.aet, warmup.files[half:], 1, timeout)
        problems += more
    if problems:
        raise Invalid(f"warm-up failed: {problems[:3]}")
    for study in server.get("/studies").json():
        server.delete(f"/studies/{study}").raise_for_status()
    count = server.get("/statistics").json().get("CountInstances")
    if count != 0:
        raise Invalid(f"{count} instances left after deleting the warm-up study")


def measure_once(servers: Servers, config: Config, transport: str, clients: int, workload: Workload,
                 bodies: list[bytes], warmup: Workload, storescu: str, args, rng: random.Random) -> dict:
    """One measurement on a fresh, warmed-up Orthanc. `crashed` is set when Orthanc died under the load."""
    label = f"{transport}x{clients}"
    result = {"config": config.key, "transport": transport, "clients": clients, "instances": len(workload.files),
              "input_bytes": workload.total_bytes, "problems": []}
    server = None
    try:
        server = servers.start(config, label)
        try:
            warm_up(server, warmup, storescu, args.request_timeout)
            with CpuMeter(server.process.pid) as cpu:
                if transport == "rest":
                    seconds, problems = send_rest(server.url, bodies, clients, args.request_timeout)
                else:
                    seconds, problems = send_storescu(storescu, server.dicom_port, server.aet, workload.files, clients,
                                                      args.run_timeout)
            result["seconds"] = round(seconds, 4)
            result["instances_per_s"] = round(len(workload.files) / seconds, 2)
            result["mb_per_s"] = round(workload.total_bytes / MB / seconds, 2)
            result["cpu"] = cpu.report(seconds)
            result["cpu"]["server_cpu_ms_per_instance"] = round(cpu.server * 1000 / len(workload.files), 2)
            result["problems"] += problems
            if not server.alive():
                result["problems"].append("Orthanc stopped answering")
            else:
                stored, problems = check_stored(server, workload, config.syntax, args.sample, rng)
                result.update(stored)
                result["problems"] += problems
                if config.plugin:
                    result["plugin_history"] = plugin_history(server, set(workload.sop_uids))
            known, log_lines = log_problems(server)
            result["htj2k_syntax_log_errors"] = known
            if log_lines:
                result["log_problems"] = log_lines[:10]
        finally:
            if server.process is not None and server.process.poll() is not None:
                result["crashed"] = server.process.returncode  # negative: killed by that signal
            servers.stop()
    except Invalid as error:
        result["problems"].append(str(error))
    except (RuntimeError, requests.RequestException, OSError, ValueError) as error:
        result["problems"].append(f"{type(error).__name__}: {error}")
    if server is not None and server.process is not None and server.process.returncode not in (None, 0) \
            and "crashed" not in result:
        result["crashed"] = server.process.returncode
    return result


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def measure(servers: Servers, config: Config, transport: str, clients: int, workload: Workload,
            bodies: list[bytes], warmup: Workload, storescu: str, args, rng: random.Random) -> dict:
    """Best of --repeat measurements; a measurement whose Orthanc crashed is retried (--attempts in all)."""
    kept: list[dict] = []
    crashes: list[str] = []
    attempts = 0
    while len(kept) < args.repeat and attempts < args.repeat + args.attempts - 1:
        attempts += 1
        run = measure_once(servers, config, transport, clients, workload, bodies, warmup, storescu, args, rng)
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
        if config.plugin:  # our own server crashing is never "the reference's problem"
            result["problems"] = [result["unmeasurable"]] + result["problems"][:3]
        else:
            result["client_errors_while_crashing"] = result.pop("problems")[:5]
            result["problems"] = []
    else:
        valid = [run for run in kept if not run["problems"]]
        result = max(valid, key=lambda run: run["instances_per_s"]) if valid else kept[-1]
        if len(kept) > 1:
            result["repetitions_instances_per_s"] = [run.get("instances_per_s") for run in kept]
    result["attempts"] = attempts
    if crashes:
        result["crashes"] = crashes
    return result


def measure_storage_once(servers: Servers, config: Config, files: list[RealFile], args) -> dict:
    """Store the real files (REST, one at a time); stored bytes and syntax of each."""
    result = {"config": config.key, "files": {}, "problems": []}
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
            stored = stored_instances(server)
            for real in files:
                if real.sop_uid not in stored:
                    result["problems"].append(f"{real.name}: not stored")
                    continue
                instance = stored[real.sop_uid]
                result["files"][real.name] = {"stored_bytes": instance["size"],
                                              "syntax": stored_syntax(server, instance["id"])}
            _, log_lines = log_problems(server)
            if log_lines:
                result["log_problems"] = log_lines[:10]
        finally:
            servers.stop()
    except (RuntimeError, requests.RequestException, OSError, ValueError) as error:
        result["problems"].append(f"{type(error).__name__}: {error}")
    if server is not None and server.process is not None and server.process.returncode not in (None, 0):
        result["crashed"] = server.process.returncode
    return result


def measure_storage(servers: Servers, config: Config, files: list[RealFile], args) -> dict:
    """measure_storage_once, tried again on a fresh Orthanc when Orthanc crashed (--attempts in all)."""
    crashes = []
    for attempt in range(1, args.attempts + 1):
        result = measure_storage_once(servers, config, files, args)
        if "crashed" not in result:
            break
        crashes.append(f"attempt {attempt}: Orthanc {describe_exit(result['crashed'])}; "
                       f"{(result['problems'] or ['no client error'])[0][:160]}")
    else:
        result["unmeasurable"] = f"Orthanc crashed in every attempt ({args.attempts}): " \
                                 f"{describe_exit(result['crashed'])}"
        if config.plugin:
            result["problems"] = [result["unmeasurable"]] + result["problems"][:3]
        else:
            result["client_errors_while_crashing"] = result.pop("problems")[:5]
            result["problems"] = []
    if crashes:
        result["crashes"] = crashes
    return result


def profile_in_process(path: str, repeat: int) -> dict:
    """The plugin's transcode() on one workload file, in this process (no Orthanc): where the time goes."""
    sys.path.insert(0, os.path.join(REPO_ROOT, "plugin"))
    try:
        from neuronova.codec import htj2k, j2k
        from neuronova.transcoder import TranscodeSettings, transcode
    except Exception as error:  # the plugin is being edited by others: report, do not fail the run
        return {"error": f"cannot import the plugin's transcoder: {type(error).__name__}: {error}"}
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

    result: dict = {"file_bytes": len(data)}
    settings = {"htj2k verify": TranscodeSettings(target="htj2k", verify=True),
                "htj2k no verify": TranscodeSettings(target="htj2k", verify=False),
                "j2k verify": TranscodeSettings(target="j2k", verify=True),
                "j2k no verify": TranscodeSettings(target="j2k", verify=False)}
    result["transcode_ms"] = {label: timed(transcode, data, value) for label, value in settings.items()}
    pixels = dcmread(io.BytesIO(data)).pixel_array
    bits = int(dcmread(io.BytesIO(data), stop_before_pixels=True).BitsStored)
    htj2k_stream, j2k_stream = htj2k.encode(pixels, bits), j2k.encode(pixels, bits)
    result["codec_ms"] = {"htj2k encode": timed(htj2k.encode, pixels, bits),
                          "htj2k decode": timed(htj2k.decode, htj2k_stream),
                          "j2k encode": timed(j2k.encode, pixels, bits), "j2k decode": timed(j2k.decode, j2k_stream),
                          "pydicom full dcmread": timed(lambda: dcmread(io.BytesIO(data))),
                          "pydicom header dcmread": timed(lambda: dcmread(io.BytesIO(data), stop_before_pixels=True))}
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(repeat):
        transcode(data, settings["htj2k verify"])
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(8)
    result["cprofile_htj2k_verify_top_tottime"] = [line.strip() for line in text.getvalue().splitlines()
                                                   if line.strip() and ("(" in line or "tottime" in line)][:10]
    return result


# ---------------------------------------------------------------------------------------------------------
# Report


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def verdict(value: float | None, ok: bool) -> str:
    return "n/a" if value is None else ("PASS" if ok else "FAIL")


def summarize(results: dict) -> dict:
    runs = {(r["config"], r["transport"], r["clients"]): r for r in results["throughput"]}

    def throughput(config: str, transport: str, clients: int) -> float | None:
        run = runs.get((config, transport, clients))
        return run.get("instances_per_s") if run and not run["problems"] and "unmeasurable" not in run else None

    ratios: dict = {}
    for other, target in (("plain", TARGET_VS_PLAIN), ("gdcm", TARGET_VS_GDCM)):
        for transport in TRANSPORTS:
            for clients in CLIENTS:
                value = ratio(throughput("htj2k", transport, clients), throughput(other, transport, clients))
                entry = {"value": value}
                reference = runs.get((other, transport, clients), {})
                if "unmeasurable" in reference:
                    entry["note"] = f"{other}: {reference['unmeasurable']}"
                if clients == 4:
                    entry.update(target=target, verdict=verdict(value, value is not None and value >= target))
                ratios[f"htj2k/{other} {TRANSPORT_LABEL[transport]} x{clients}"] = entry
    def cpu(config: str, transport: str, clients: int) -> float | None:
        run = runs.get((config, transport, clients))
        return run["cpu"]["server_cpu_ms_per_instance"] if run and not run["problems"] and run.get("cpu") else None

    # Robust against a busy machine: what the throughput ratio would be if the server were the only thing
    # running and CPU-bound (server CPU per instance of the other configuration over htj2k's).
    for other in ("plain", "gdcm"):
        for transport in TRANSPORTS:
            ratios[f"server CPU/instance {other}/htj2k {TRANSPORT_LABEL[transport]} x4"] = {
                "value": ratio(cpu(other, transport, 4), cpu("htj2k", transport, 4))}
    storage = {r["config"]: r for r in results["storage"]}

    def real_total(config: str) -> int | None:
        run = storage.get(config)
        if not run or run["problems"] or "unmeasurable" in run or len(run["files"]) != len(results["real_files"]):
            return None
        return sum(item["stored_bytes"] for item in run["files"].values())

    uncompressed = real_total("plain")
    value = ratio(uncompressed, real_total("htj2k"))
    ratios["storage uncompressed/htj2k (real files)"] = {
        "value": value, "target": TARGET_STORAGE_RATIO,
        "verdict": verdict(value, value is not None and value >= TARGET_STORAGE_RATIO)}
    value = ratio(real_total("htj2k"), real_total("gdcm"))
    ratios["storage htj2k/gdcm (real files)"] = {
        "value": value, "target": f"within {TARGET_VS_GDCM_BYTES:.0%}",
        "verdict": verdict(value, value is not None and abs(value - 1) <= TARGET_VS_GDCM_BYTES)}

    def workload_bytes(config: str) -> int | None:
        sizes = [r.get("stored_bytes") for r in results["throughput"]
                 if r["config"] == config and not r["problems"] and r.get("stored_bytes")]
        return sizes[0] if sizes else None

    ratios["storage uncompressed/htj2k (workload)"] = {"value": ratio(workload_bytes("plain"), workload_bytes("htj2k"))}
    ratios["storage htj2k/gdcm (workload)"] = {"value": ratio(workload_bytes("htj2k"), workload_bytes("gdcm"))}
    return ratios


def print_report(results: dict) -> None:
    workload = results["workload"]
    print()
    git, end = results["git"], results.get("git_at_end", results["git"])
    changed = "" if end == git else f"; at the end {end['commit'][:10]}{' + local changes' if end['dirty'] else ''}"
    print(f"NeuroNova ingest benchmark, {results['started']}  ({results['machine']['cpus']} CPUs, "
          f"commit {git['commit'][:10]}{' + local changes' if git['dirty'] else ''}{changed})")
    print(f"Workload: {workload['instances']} x {workload['mean_bytes'] / MB:.3f} MB CT ({WORKLOAD_SOURCE}, "
          f"new SOP UIDs, "
          f"{workload['series']} series), {workload['total_bytes'] / MB:.1f} MB; fresh Orthanc per cell, warmed up")
    print()
    columns = [(t, c) for t in TRANSPORTS for c in CLIENTS]
    header = f"{'configuration':<16}" + "".join(f"{TRANSPORT_LABEL[t] + ' x' + str(c):>17}" for t, c in columns)
    header += f"{'stored MB':>11}{'ratio':>7}  stored syntax"
    print(f"C-STORE with TCP_NODELAY=1 for Orthanc and storescu: {results['tcp_nodelay']}"
          f"{'' if results['tcp_nodelay'] else ' (DCMTK Nagle on: ~40 ms stall per instance)'}")
    print()
    print("Throughput: instances/s (MB/s of uncompressed input); '!' = invalid cell, "
          "'c' = Orthanc crashed in an earlier attempt (see below)")
    print(header)
    runs = {(r["config"], r["transport"], r["clients"]): r for r in results["throughput"]}
    plain_bytes = next((r.get("stored_bytes") for r in results["throughput"]
                        if r["config"] == "plain" and r.get("stored_bytes")), None)
    for config in results["configs"]:
        line = f"{config:<16}"
        stored, syntaxes = None, set()
        for transport, clients in columns:
            run = runs.get((config, transport, clients))
            if run and "unmeasurable" in run:
                line += f"{'CRASHED':>17}"
                continue
            if not run or "instances_per_s" not in run:
                line += f"{'-':>17}"
                continue
            mark = "!" if run["problems"] else "c" if run.get("crashes") else " "
            line += f"{run['instances_per_s']:>8.1f} ({run['mb_per_s']:>5.1f}){mark}"
            stored = stored or run.get("stored_bytes")
            syntaxes |= set(run.get("syntaxes", {}))
        line += f"{stored / MB:>11.1f}" if stored else f"{'-':>11}"
        line += f"{plain_bytes / stored:>7.2f}" if stored and plain_bytes else f"{'-':>7}"
        line += "  " + ", ".join(SYNTAX_NAMES.get(s, s) for s in sorted(syntaxes))
        print(line)

    print()
    print("Server CPU per instance (ms, Orthanc process) and other processes' share of the machine during the cell")
    print(f"{'configuration':<16}" + "".join(f"{TRANSPORT_LABEL[t] + ' x' + str(c):>17}" for t, c in columns))
    for config in results["configs"]:
        line = f"{config:<16}"
        for transport, clients in columns:
            run = runs.get((config, transport, clients))
            cpu = (run or {}).get("cpu")
            if not cpu:
                line += f"{'-':>17}"
                continue
            share = cpu["other_processes_share_of_machine"]
            line += f"{cpu['server_cpu_ms_per_instance']:>9.1f} {f'({share:.0%})' if share is not None else '':>7}"
        print(line)

    plugin_runs = [r for r in results["throughput"] if (r.get("plugin_history") or {}).get("entries")]
    if plugin_runs:
        print()
        print("Plugin pipeline time per instance in Orthanc (GET /neuronova/history duration_ms: median / p90), wall "
              "time per instance, and pipelines running at once (mean)")
        for run in plugin_runs:
            history = run["plugin_history"]
            wall = 1000 * run["seconds"] / run["instances"] * run["clients"]
            print(f"  {run['config']:<16}{TRANSPORT_LABEL[run['transport']] + ' x' + str(run['clients']):<13}"
                  f"pipeline {history['duration_ms_median']:>6.1f} / {history['duration_ms_p90']:>6.1f} ms   "
                  f"wall per instance per client {wall:>6.1f} ms   "
                  f"pipelines in flight {history.get('pipelines_in_flight_mean') or 0:>4.2f}   "
                  f"(path {','.join(history['paths'])})")

    profile = results.get("in_process_profile") or {}
    if "transcode_ms" in profile:
        print()
        print("In-process (no Orthanc, one thread) on one workload file, median ms:")
        print("  transcode(): " + ", ".join(f"{k} {v:.1f}" for k, v in profile["transcode_ms"].items()))
        print("  parts: " + ", ".join(f"{k} {v:.1f}" for k, v in profile["codec_ms"].items()))
    elif profile:
        print(f"\nIn-process profile skipped: {profile.get('error')}")

    if results["storage"]:
        print()
        print("Storage of real files (stored bytes; ratio = uncompressed / stored; * = not the configuration's syntax)")
        configs = [r["config"] for r in results["storage"]]
        print(f"{'file':<36}{'input':>10}" + "".join(f"{c:>22}" for c in configs))
        storage = {r["config"]: r for r in results["storage"]}
        expected = {c.key: c.syntax for c in CONFIGS}
        totals = {c: 0 for c in configs}
        for real in results["real_files"]:
            line = f"{real['name'][:35]:<36}{real['size']:>10}"
            for config in configs:
                item = storage[config]["files"].get(real["name"])
                if not item:
                    line += f"{'CRASHED' if 'unmeasurable' in storage[config] else '-':>22}"
                    continue
                totals[config] += item["stored_bytes"]
                mark = "*" if config != "plain" and item["syntax"] != expected[config] else " "
                line += f"{item['stored_bytes']:>12} {real['size'] / item['stored_bytes']:>6.2f}x{mark} "
            print(line + f"  {real['description']}")
        input_total = sum(r["size"] for r in results["real_files"])
        line = f"{'TOTAL':<36}{input_total:>10}"
        for config in configs:
            line += f"{totals[config]:>12} {input_total / totals[config]:>6.2f}x  " if totals[config] else f"{'-':>22}"
        print(line)

    print()
    print("Ratios (issue 3 targets with 4 clients on 0.5 MB CT; storage on the real files)")
    for name, entry in results["ratios"].items():
        value = entry["value"]
        text = f"{value:.3f}" if value is not None else "n/a"
        if entry.get("note"):
            name_note = f"   ({entry['note']})"
        else:
            name_note = ""
        target = ""
        if "target" in entry:
            bound = f"{'>= ' if isinstance(entry['target'], float) else ''}{entry['target']}"
            target = f"   target {bound}: {entry['verdict']}"
        print(f"  {name:<42}{text:>8}{target}{name_note}")
    print()
    unmeasurable = [f"{r['config']} {TRANSPORT_LABEL[r['transport']]} x{r['clients']}: {r['unmeasurable']}"
                    for r in results["throughput"] if "unmeasurable" in r]
    unmeasurable += [f"{r['config']} real files: {r['unmeasurable']}"
                     for r in results["storage"] if "unmeasurable" in r]
    if results["valid"]:
        print("RUN VALID: in every figure shown, every POST answered 200/Success, every storescu exited 0, every "
              "instance was stored with the expected transfer syntax.")
        if unmeasurable:
            print("Cells without a figure because the reference Orthanc (no NeuroNova plugin) crashed under that load:")
            for line in unmeasurable:
                print(f"  - {line}")
    else:
        print("RUN INVALID: the figures above are not to be trusted:")
        for problem in results["problems"][:30]:
            print(f"  - {problem}")
    warnings = results.get("warnings", [])
    for warning in warnings[:20]:
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
    parser.add_argument("--instances", type=int, default=None, help="workload size (default 200; --quick: 16)")
    parser.add_argument("--quick", action="store_true", help="smoke test: few instances, short warm-up")
    parser.add_argument("--configs", default=",".join(c.key for c in CONFIGS),
                        help=f"comma-separated subset of {', '.join(c.key for c in CONFIGS)}")
    parser.add_argument("--series", type=int, default=4, help="series in the workload study (default 4)")
    parser.add_argument("--warmup", type=int, default=8, help="warm-up instances per server (default 8)")
    parser.add_argument("--sample", type=int, default=10,
                        help="stored files re-read with pydicom per cell (default 10)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="measure each cell this many times (fresh Orthanc each) and keep the best (default 1)")
    parser.add_argument("--attempts", type=int, default=3,
                        help="tries per measurement when Orthanc crashes under the load (default 3)")
    parser.add_argument("--stock-tcp", action="store_true",
                        help="do not set TCP_NODELAY=1 for Orthanc and storescu (DCMTK then leaves Nagle on: "
                             "~40 ms stall per C-STORE instance)")
    parser.add_argument("--no-storage", action="store_true", help="skip the real-file storage measurement")
    parser.add_argument("--no-profile", action="store_true", help="skip the in-process transcode() profile")
    parser.add_argument("--request-timeout", type=float, default=120, help="seconds per POST (default 120)")
    parser.add_argument("--run-timeout", type=float, default=1800, help="seconds per storescu cell (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary storage folders and Orthanc logs")
    parser.add_argument("--results-dir", default=os.path.join(BENCH_DIR, "results"))
    args = parser.parse_args()
    if args.instances is None:
        args.instances = 16 if args.quick else 200
    if args.quick:
        args.warmup = min(args.warmup, 4)
        args.sample = min(args.sample, 4)
    if args.repeat < 1 or args.attempts < 1:
        parser.error("--repeat and --attempts must be at least 1")
    if args.instances < 4:
        parser.error("--instances must be at least 4 (4 clients)")
    wanted = [key.strip() for key in args.configs.split(",") if key.strip()]
    unknown = set(wanted) - {c.key for c in CONFIGS}
    if unknown:
        parser.error(f"unknown configurations {sorted(unknown)}")
    configs = [c for c in CONFIGS if c.key in wanted]

    if shutil.which("Orthanc") is None:
        raise SystemExit("Orthanc is not installed (Debian package 'orthanc'): run make system-packages")
    storescu = find_storescu()
    if any(c.key == "gdcm" for c in configs) and not os.path.exists(GDCM_PLUGIN):
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
    servers = Servers(os.path.join(root, "servers"), args.keep)
    rng = random.Random(1)
    results: dict = {
        "started": started.isoformat(timespec="seconds"), "arguments": vars(args),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "loadavg_at_start": os.getloadavg()},
        "orthanc": orthanc_version(), "storescu": storescu, "git": git_state(),
        "tcp_nodelay": not args.stock_tcp,
        "orthanc_json_neuronova": orthanc_json.get("NeuroNova"),
        "configs": [c.key for c in configs],
        "config_details": {c.key: {"title": c.title, "neuronova_plugin": c.plugin,
                                   "overrides": {**COMMON_OVERRIDES, **c.overrides}, "expected_syntax": c.syntax}
                           for c in configs},
        "throughput": [], "storage": [], "problems": [], "warnings": [],
    }
    try:
        print(f"Writing the workload ({args.instances} files) to {root} ...", flush=True)
        workload = make_workload(os.path.join(root, "workload"), args.instances, args.series, "bench")
        warmup = make_workload(os.path.join(root, "warmup"), args.warmup, 1, "warmup")
        bodies = workload.bodies()
        results["workload"] = {"source": WORKLOAD_SOURCE, "instances": len(workload.files), "series": args.series,
                               "total_bytes": workload.total_bytes,
                               "mean_bytes": workload.total_bytes / len(workload.files),
                               "warmup_instances": args.warmup}
        reals, notes = real_files()
        results["real_files"] = [{"name": r.name, "size": r.size, "description": r.description} for r in reals]
        results["warnings"] += notes

        if not args.no_profile:
            print("In-process transcode() profile ...", flush=True)
            results["in_process_profile"] = profile_in_process(workload.files[0], 10 if args.quick else 30)

        for config in configs:
            for transport in TRANSPORTS:
                for clients in CLIENTS:
                    print(f"  {config.key:<16}{TRANSPORT_LABEL[transport]:>8} x{clients} ... ", end="", flush=True)
                    run = measure(servers, config, transport, clients, workload, bodies, warmup, storescu, args, rng)
                    results["throughput"].append(run)
                    for crash in run.get("crashes", []):
                        print(f"[{crash[:90]}] ", end="", flush=True)
                    if "unmeasurable" in run:
                        print(f"CRASHED: {run['unmeasurable']}", flush=True)
                    elif "instances_per_s" in run:
                        stored = f", stored {run['stored_bytes'] / MB:.1f} MB" if run.get("stored_bytes") else ""
                        print(f"{run['instances_per_s']:.1f} inst/s, {run['mb_per_s']:.1f} MB/s{stored}"
                              f"{'  INVALID: ' + run['problems'][0] if run['problems'] else ''}", flush=True)
                    else:
                        print(f"FAILED: {run['problems'][:1]}", flush=True)
            if not args.no_storage and reals:
                print(f"  {config.key:<16} real files ...", flush=True)
                results["storage"].append(measure_storage(servers, config, reals, args))
    except KeyboardInterrupt as error:
        results["problems"].append(f"interrupted ({error or 'Ctrl-C'})")
    finally:
        servers.stop()
        if args.keep:
            print(f"Kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)

    for run in results["throughput"]:
        results["problems"] += [f"{run['config']} {TRANSPORT_LABEL[run['transport']]} x{run['clients']}: {p}"
                                for p in run["problems"]]
        cell = f"{run['config']} {TRANSPORT_LABEL[run['transport']]} x{run['clients']}"
        results["warnings"] += [f"{cell} log: {line}" for line in run.get("log_problems", [])[:3]]
        results["warnings"] += [f"{cell}: {crash} (figure from a later attempt)" if not run["problems"]
                                else f"{cell}: {crash}" for crash in run.get("crashes", [])]
    expected = {c.key: c.syntax for c in configs}
    for run in results["storage"]:
        results["problems"] += [f"{run['config']} real files: {p}" for p in run["problems"]]
        results["warnings"] += [f"{run['config']} real files: {crash}" for crash in run.get("crashes", [])]
        for name, item in run["files"].items():
            if run["config"] != "plain" and item["syntax"] != expected[run["config"]]:
                results["warnings"].append(f"{run['config']}: {name} stored as {item['syntax']}, not transcoded")
    expected_cells = len(configs) * len(TRANSPORTS) * len(CLIENTS)
    if len(results["throughput"]) != expected_cells:
        results["problems"].append(f"only {len(results['throughput'])} of {expected_cells} cells measured")
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
