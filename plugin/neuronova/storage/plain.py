"""The way back: turn a storage folder written by the plugin into plain files, the received bytes,
in Orthanc's own layout, so that Orthanc runs on it without the plugin. Run it with Orthanc stopped:

    .venv/bin/python -m neuronova.storage.plain /var/lib/orthanc/db    (PYTHONPATH=plugin)

Each container is restored, its bytes checked against the size its recipe records, and written
aside then renamed into place: an interrupted run leaves every file whole, and can be run again.
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid as uuid_module

from . import container
from .background import stored_files


def make_plain(root: str, out=sys.stdout) -> tuple[int, int, int]:
    """(files seen, containers restored, failures)."""
    seen = restored = failed = 0
    for name in stored_files(root):
        seen += 1
        path = os.path.join(root, name[0:2], name[2:4], name)
        with open(path, "rb") as stored_file:
            stored = stored_file.read()
        if not container.is_container(stored):
            continue
        try:
            received = container.restore(stored)
        except container.ContainerError as error:
            failed += 1
            print(f"{path}: left as it is: {error}", file=out)
            continue
        temporary = f"{path}.{uuid_module.uuid4().hex[:8]}.tmp"
        with open(temporary, "wb") as plain_file:
            plain_file.write(received)
            plain_file.flush()
            os.fsync(plain_file.fileno())
        os.replace(temporary, path)
        restored += 1
        if restored % 1000 == 0:
            print(f"{restored} files restored ({seen} seen)", file=out)
    return seen, restored, failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("storage_directory", help="Orthanc's StorageDirectory (Orthanc must be stopped)")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.storage_directory):
        print(f"{args.storage_directory}: not a folder", file=sys.stderr)
        return 2
    seen, restored, failed = make_plain(args.storage_directory)
    ledger = os.path.join(args.storage_directory, "neuronova", "storage.sqlite")
    print(f"{seen} files, {restored} restored to the received bytes, {failed} failed")
    if not failed:  # the plugin's size ledger no longer describes the files
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(ledger + suffix):
                os.remove(ledger + suffix)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
