#!/usr/bin/env python3
"""Scale-out benchmark (issue 12): 1 and 2 Orthanc servers with the plugin on one PostgreSQL, side by side.

Each configuration gets a fresh database on one PostgreSQL server (Debian's, started here) and a fresh
storage folder, then N copies of a 0.5 MB CT (fresh UIDs, one study per 10 instances, under a patient
the EMR knows by another name, so every instance is coerced) are posted by 4 REST clients, spread over
the servers. Configurations:
  state-pg-1    1 server, Orthanc's index and the plugin's state (claims, history, registry) in PostgreSQL
  state-pg-2    2 servers, the same
  state-lite-1  1 server, Orthanc's index in PostgreSQL, the plugin's state in SQLite (the reference:
                the difference is the cost of the plugin's own PostgreSQL work)
Measured per configuration: wall throughput (instances/s); CPU per instance (ms) of the Orthanc
processes (user + system, /proc) and of the PostgreSQL server processes; the plugin's round trips.
On a machine with fewer cores than servers + PostgreSQL, the CPU is the ceiling: compare CPU per
instance, not throughput.

    .venv/bin/python bench/cluster_bench.py [--instances N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH_DIR), "tests"))

from pydicom import dcmread  # noqa: E402
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.uid import generate_uid  # noqa: E402

from support.cluster import cluster_servers, start_together  # noqa: E402
from support.postgres import PostgresServer  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
CLIENTS = 4


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])) / TICKS  # incl. waited children


def postgres_cpu(postgres: PostgresServer) -> float:
    """The postmaster and its backends (children), living and reaped."""
    with open(os.path.join(postgres.data, "postmaster.pid")) as pid_file:
        postmaster = int(pid_file.readline())
    total = cpu_seconds(postmaster)
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        total += cpu_seconds(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return total


def instances(count: int) -> list[bytes]:
    dataset = dcmread(get_testdata_file("CT_small.dcm"))
    dataset.PatientID, dataset.PatientName = "P-2024-001234", "HONG^GD"
    files, study = [], None
    for index in range(count):
        if index % 10 == 0:
            study = generate_uid()
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study, generate_uid()
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        from io import BytesIO
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        files.append(buffer.getvalue())
    return files


def run(postgres: PostgresServer, name: str, servers_count: int, plugin: dict, files: list[bytes]) -> dict:
    folder = tempfile.mkdtemp(prefix=f"neuronova-bench-{name}-")
    database = postgres.create_database(name.replace("-", "_"))
    servers = cluster_servers(postgres, folder, database, names=tuple(f"s{i}" for i in range(servers_count)),
                              plugin=plugin)
    for server in servers:
        server.verbose = False
    errors = start_together(servers)
    assert not errors, errors
    try:
        warm = instances(4)
        for index, data in enumerate(warm):
            assert servers[index % servers_count].post("/instances", data=data).status_code == 200
        time.sleep(1.0)
        orthanc_before = sum(cpu_seconds(server.process.pid) for server in servers)
        postgres_before = postgres_cpu(postgres)
        failures, started = [], time.perf_counter()

        def client(offset):
            for index in range(offset, len(files), CLIENTS):
                answer = servers[index % servers_count].post("/instances", data=files[index])
                if answer.status_code != 200:
                    failures.append(answer.status_code)

        threads = [threading.Thread(target=client, args=(offset,)) for offset in range(CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.perf_counter() - started
        time.sleep(0.5)  # the last history rows
        orthanc_cpu = sum(cpu_seconds(server.process.pid) for server in servers) - orthanc_before
        postgres_used = postgres_cpu(postgres) - postgres_before
        assert not failures, failures
        stored = len(servers[0].get("/instances").json())
        assert stored == len(files) + len(warm), stored
        return {"config": name, "servers": servers_count, "instances": len(files), "wall_s": round(wall, 2),
                "instances_per_s": round(len(files) / wall, 1),
                "orthanc_cpu_ms_per_instance": round(1000 * orthanc_cpu / len(files), 2),
                "postgres_cpu_ms_per_instance": round(1000 * postgres_used / len(files), 2)}
    finally:
        for server in servers:
            server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--instances", type=int, default=400)
    arguments = parser.parse_args()
    files = instances(arguments.instances)
    postgres = PostgresServer().start()
    try:
        results = [run(postgres, "state-lite-1", 1, {"SharedState": {"Backend": "sqlite"}}, files),
                   run(postgres, "state-pg-1", 1, {}, files),
                   run(postgres, "state-pg-2", 2, {}, files)]
    finally:
        postgres.destroy()
    print(f"{'config':14} {'servers':>7} {'inst/s':>8} {'Orthanc ms/inst':>16} {'PostgreSQL ms/inst':>19}")
    for row in results:
        print(f"{row['config']:14} {row['servers']:>7} {row['instances_per_s']:>8} "
              f"{row['orthanc_cpu_ms_per_instance']:>16} {row['postgres_cpu_ms_per_instance']:>19}")
    lite, one, two = results
    print(f"plugin's PostgreSQL work per instance: Orthanc +"
          f"{one['orthanc_cpu_ms_per_instance'] - lite['orthanc_cpu_ms_per_instance']:.2f} ms, PostgreSQL +"
          f"{one['postgres_cpu_ms_per_instance'] - lite['postgres_cpu_ms_per_instance']:.2f} ms; "
          f"2 servers / 1: {two['instances_per_s'] / one['instances_per_s']:.2f}x throughput on {os.cpu_count()} cores")
    os.makedirs(os.path.join(BENCH_DIR, "results"), exist_ok=True)
    path = os.path.join(BENCH_DIR, "results", f"cluster-{time.strftime('%Y%m%dT%H%M%S')}.json")
    with open(path, "w") as result_file:
        json.dump(results, result_file, indent=1)
    print("results:", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
