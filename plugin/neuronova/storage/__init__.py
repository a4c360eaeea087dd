"""The storage: the container file format (container, layout, codec), Orthanc's storage area (area),
the sizes ledger (ledger), background compression and the adoption job (background), and the way
back to plain files (plain)."""
