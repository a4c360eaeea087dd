"""Peak and retained memory of Orthanc per kind of request (issue 11): one fresh Orthanc per request,
with the plugin and plugin-less, resident memory above idle read from /proc (VmHWM, VmRSS).

    .venv/bin/python bench/request_memory.py

Prints a Markdown table (the README's); a measurement, not a test: it exits 0 whatever it finds.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time
import zipfile

import numpy as np
import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "tests"), os.path.join(REPO, "plugin")]
from integration.test_upload import _deflate_bomb  # noqa: E402
from support.servers import OrthancServer  # noqa: E402

UPLOAD = "/neuronova/upload/P-2024-001234"


def _status_mib(server: OrthancServer, key: str) -> int:
    with open(f"/proc/{server.process.pid}/status", encoding="ascii") as status:
        return int(next(line for line in status if line.startswith(key)).split()[1]) // 1024


def multiframe(frames: int = 200) -> bytes:
    """A 105 MB 16-bit MR of 200 512 x 512 frames (random values: the worst case for compression)."""
    dataset = pydicom.dcmread(get_testdata_file("emri_small.dcm"))
    dataset.SOPInstanceUID = generate_uid()
    dataset.NumberOfFrames, dataset.Rows, dataset.Columns = frames, 512, 512
    dataset.PixelData = np.random.default_rng(1).integers(0, 4096, frames * 512 * 512, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def zip_with_a_gigabyte_member() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("zeros.dcm", "w", force_zip64=True) as member:
            for _ in range(64):
                member.write(bytes(16 * 1024 * 1024))
    return buffer.getvalue()


CASES = [
    ("POST /instances, 105 MB 200-frame MR", "/instances", multiframe, "application/dicom", True),
    ("POST /instances, 105 MB 200-frame MR, plain Orthanc", "/instances", multiframe, "application/dicom", False),
    ("upload route, 105 MB 200-frame MR", UPLOAD, multiframe, "application/dicom", True),
    ("upload route, 1.1 GB body (over MaxUploadSizeMB)", UPLOAD, lambda: bytes(1100 * 1024 * 1024),
     "application/dicom", True),
    ("POST /instances, 1.1 GB body, plain Orthanc", "/instances", lambda: bytes(1100 * 1024 * 1024),
     "application/dicom", False),
    ("upload route, 1 MB ZIP holding a 1 GiB member", UPLOAD, zip_with_a_gigabyte_member, "application/zip", True),
    ("upload route, 1 MB deflated DICOM inflating to 1 GiB", UPLOAD, lambda: _deflate_bomb(1024 ** 3),
     "application/dicom", True),
]


def main() -> int:
    print("| request | body | answer | peak above idle | kept after |")
    print("|---|---|---|---|---|")
    for title, uri, make, content_type, plugin in CASES:
        body = make()
        server = OrthancServer(tempfile.mkdtemp(prefix="memory-"), plugin=plugin, verbose=False).start()
        try:
            time.sleep(1)
            idle = _status_mib(server, "VmRSS")
            answer = requests.post(server.url + uri, data=body, headers={"Content-Type": content_type}, timeout=900)
            time.sleep(2)
            print(f"| {title} | {len(body) / 1e6:.1f} MB | {answer.status_code} | "
                  f"+{_status_mib(server, 'VmHWM') - idle} MiB | +{_status_mib(server, 'VmRSS') - idle} MiB |",
                  flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
