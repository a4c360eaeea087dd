#!/usr/bin/env python3
"""Take the README's screenshots (docs/screenshots/*.png) by running the browser tests with
NEURONOVA_SCREENSHOTS set: the pictures show exactly what the tests check, on a real Orthanc.

Usage: .venv/bin/python scripts/screenshots.py   (or `make screenshots`)
"""

from __future__ import annotations

import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO_ROOT, "docs", "screenshots")


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    env = dict(os.environ, NEURONOVA_SCREENSHOTS=OUT)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "tests/browser/test_upload_dialog.py",
                             "tests/browser/test_worklist.py",
                             "tests/browser/test_storage_panel.py", "tests/browser/test_viewer.py"],
                            cwd=REPO_ROOT, env=env)
    if result.returncode == 0:
        print(f"Screenshots written to {os.path.relpath(OUT, REPO_ROOT)}:",
              ", ".join(sorted(name for name in os.listdir(OUT) if name.endswith(".png"))))
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
