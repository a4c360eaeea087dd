"""Which store holds the plugin's state: SQLite files under the storage folder (one server), or
PostgreSQL for a cluster (NeuroNova.SharedState; by default when Orthanc's index is in PostgreSQL)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..config import Settings
from ..directory import EmbeddedRegistry
from ..history import IngestHistory
from ..reconcile import StudyOwners

log = logging.getLogger("neuronova.shared")
SCHEMA_NAME = "neuronova"  # the plugin's tables, apart from Orthanc's own in the same database


@dataclass
class PluginState:
    history: IngestHistory
    owners: object  # reconcile.StudyOwners or claims.SharedStudyOwners
    registry: EmbeddedRegistry | None  # None when the directory is the hospital's FHIR server
    shared: bool
    database: object = None  # database.SharedDatabase when shared

    def close(self) -> None:
        self.history.close()
        if self.database is not None:
            self.owners.stop()
            self.database.close()


def open_state(settings: Settings) -> PluginState:
    directory = settings.directory
    embedded = directory.backend == "embedded"
    if settings.shared.backend == "sqlite":
        return PluginState(IngestHistory.sqlite(settings.history_database, settings.shared.server), StudyOwners(),
                           EmbeddedRegistry(directory.database, directory.seed_file) if embedded else None, False)
    from psycopg.conninfo import make_conninfo

    from . import claims, registry
    from .database import PostgresWriter, SharedDatabase
    from ..history import POSTGRES_SCHEMA
    keywords = dict(settings.shared.connection)
    conninfo = make_conninfo(keywords.pop("conninfo", ""), **keywords, options=f"-c search_path={SCHEMA_NAME}")
    database = SharedDatabase(conninfo, settings.shared.pool_size)
    database.open()
    database.migrate((f"CREATE SCHEMA IF NOT EXISTS {SCHEMA_NAME}", *POSTGRES_SCHEMA, *claims.SCHEMA,
                      *(registry.SCHEMA if embedded else ())))
    history = IngestHistory(PostgresWriter(database, "neuronova-history"), settings.shared.server, keyed=True)
    log.info("shared state in PostgreSQL (schema %s), this server named %r", SCHEMA_NAME, settings.shared.server)
    return PluginState(history, claims.SharedStudyOwners(database, settings.shared.server),
                       registry.SharedRegistry(database, directory.seed_file) if embedded else None, True, database)
