"""NeuroNova.SharedState: SQLite for one server, PostgreSQL when Orthanc's index is there or when asked."""

import pytest

from neuronova.config import load_settings
from neuronova.errors import ConfigError

ORTHANC_PG = {"EnableIndex": True, "Host": "db", "Port": 5432, "Database": "orthanc", "Username": "orthanc",
              "Password": "secret", "Lock": False}


def test_one_server_keeps_its_state_in_sqlite_by_default():
    settings = load_settings({"Name": "PACS-1"})
    assert (settings.shared.backend, settings.shared.server) == ("sqlite", "PACS-1")
    assert settings.ledger_database.endswith("storage.sqlite")


def test_orthancs_index_in_postgresql_puts_the_state_there_too_named_by_the_server_identifier():
    settings = load_settings({"PostgreSQL": ORTHANC_PG, "DatabaseServerIdentifier": "pacs-b", "Name": "PACS"})
    assert settings.shared.backend == "postgresql"
    assert dict(settings.shared.connection) == {"host": "db", "port": "5432", "dbname": "orthanc", "user": "orthanc",
                                                "password": "secret"}
    assert settings.shared.server == "pacs-b"
    assert settings.ledger_database.endswith("storage-pacs-b.sqlite")  # one ledger per server (README)
    assert "secret" not in repr(settings.shared)


def test_the_backend_can_be_chosen_and_the_connection_given():
    settings = load_settings({"PostgreSQL": ORTHANC_PG, "NeuroNova": {"SharedState": {"Backend": "sqlite"}}})
    assert settings.shared.backend == "sqlite"
    settings = load_settings({"NeuroNova": {"SharedState": {
        "Backend": "postgresql", "ConnectionUri": "postgresql://u@h/db", "PoolSize": 8, "ServerName": "x"}}})
    assert (settings.shared.connection, settings.shared.pool_size, settings.shared.server) == (
        (("conninfo", "postgresql://u@h/db"),), 8, "x")


@pytest.mark.parametrize("section, message", [
    ({"Backend": "postgresql"}, r"SharedState\.ConnectionUri: required"),
    ({"Backend": "mysql"}, r"SharedState\.Backend: must be"),
    ({"ConnectionUri": "db:5432"}, r"SharedState\.ConnectionUri: must be a postgresql:// URI"),
    ({"PoolSize": 0}, r"SharedState\.PoolSize: must be between 1 and 100"),
    ({"Pool": 4}, r"SharedState\.Pool: unknown configuration key"),
])
def test_bad_shared_state_settings_stop_the_plugin_naming_the_key(section, message):
    with pytest.raises(ConfigError, match=message):
        load_settings({"NeuroNova": {"SharedState": section}})
