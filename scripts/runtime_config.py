#!/usr/bin/env python3
"""Write the Orthanc configuration actually used: the project's orthanc.json (or $CONFIG) with the
ports, the storage folder and the plugin script made concrete, so that instances can run side by side.

Used by `make run` (scripts/run.sh) and by the tests, so both start Orthanc the same way.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _debian_version(package: str) -> str:
    try:
        return subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _without_crashing_plugins(plugins: list[str]) -> list[str]:
    """Debian 13's orthanc-gdcm 1.8 kills Orthanc 1.12.7 on /instances/{id}/file?transcode=, which its
    DICOMweb 1.20 calls (measured): that GDCM plugin is left out; Debian 12's 1.5 stays."""
    if _debian_version("orthanc-gdcm").startswith("1.8"):
        return [plugin for plugin in plugins if "Gdcm" not in os.path.basename(plugin)]
    return plugins


def build_config(base: dict, http_port: int, dicom_port: int, data_dir: str, overrides: dict | None = None) -> dict:
    """The runtime configuration: base + ports + storage under data_dir + absolute plugin paths."""
    config = _merge(base, overrides or {})
    if isinstance(config.get("Plugins"), list):
        config["Plugins"] = _without_crashing_plugins(config["Plugins"])
    data_dir = os.path.abspath(data_dir)
    config.update(HttpPort=http_port, DicomPort=dicom_port,
                  StorageDirectory=os.path.join(data_dir, "storage"), IndexDirectory=os.path.join(data_dir, "storage"))
    if "PythonScript" in config:
        config["PythonScript"] = os.path.join(REPO_ROOT, config["PythonScript"])
    return config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=os.path.join(REPO_ROOT, "orthanc.json"))
    parser.add_argument("--http-port", type=int, default=8042)
    parser.add_argument("--dicom-port", type=int, default=4242)
    parser.add_argument("--data-dir", default=os.path.join(REPO_ROOT, "data"))
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        with open(args.config, encoding="utf-8") as config_file:
            base = json.load(config_file)
    except (OSError, ValueError) as error:
        print(f"Cannot read the Orthanc configuration {args.config}: {error}", file=sys.stderr)
        return 1
    config = build_config(base, args.http_port, args.dicom_port, args.data_dir)
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(config, out, indent=2, ensure_ascii=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
