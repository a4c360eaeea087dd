"""The plugin's state shared by several Orthanc servers on one PostgreSQL (issue 12): study claims,
the ingest history and the embedded registry. SQLite (one server) stays the default."""
