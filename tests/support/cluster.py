"""Two real Orthanc servers with the plugin on one real PostgreSQL index (Debian's orthanc-postgresql,
"Lock": false) and one storage folder: the scale-out deployment of issue 12, for the tests."""

from __future__ import annotations

import json
import os
from functools import partial

from support.concurrency import at_once
from support.postgres import POSTGRESQL_INDEX_PLUGIN, PostgresServer
from support.servers import REPO_ROOT, OrthancServer

SERVER_NAMES = ("alpha", "beta")


def cluster_servers(postgres: PostgresServer, folder: str, database: str | None = None,
                    names: tuple[str, ...] = SERVER_NAMES, plugin: dict | None = None) -> list[OrthancServer]:
    """`plugin`: NeuroNova settings on top of the shipped ones (the state is shared by default)."""
    with open(os.path.join(REPO_ROOT, "orthanc.json"), encoding="utf-8") as base_file:
        plugins = json.load(base_file)["Plugins"]
    servers = []
    for name in names:
        overrides = {**postgres.orthanc_overrides(name, database), "NeuroNova": plugin or {}}
        overrides["Plugins"] = [*plugins, POSTGRESQL_INDEX_PLUGIN]
        server = OrthancServer(os.path.join(folder, name), overrides)
        server.config["StorageDirectory"] = os.path.join(folder, "storage")  # one storage area for all
        servers.append(server)
    return servers


def start_together(servers: list[OrthancServer]) -> list[Exception]:
    """Start every server at the same moment; the errors of those that did not start."""
    errors: list[Exception] = []

    def start(server):
        try:
            server.start()
        except Exception as error:  # noqa: BLE001 - reported by the caller
            errors.append(error)

    at_once(*[partial(start, server) for server in servers])
    return errors
