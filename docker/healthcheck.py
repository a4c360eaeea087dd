#!/usr/bin/env python3
"""The image's health check: healthy once the plugin decides instances (GET /neuronova/ready answers 200).

Orthanc's /system answers a moment before that, while the plugin reads the stored studies' patients and
refuses instances with a status their sender retries. The credentials are the image's own
(ORTHANC_USER, ORTHANC_PASSWORD, as docker/orthanc.json reads them); NEURONOVA_READY_URL overrides
the address. Standard library only: it runs in the image's system Python.
"""

from __future__ import annotations

import base64
import os
import sys
import urllib.error
import urllib.request

READY_URL = "http://127.0.0.1:8042/neuronova/ready"


def main() -> int:
    url = os.environ.get("NEURONOVA_READY_URL", READY_URL)
    user = os.environ.get("ORTHANC_USER", "admin")
    password = os.environ.get("ORTHANC_PASSWORD", "change-me")
    credentials = base64.b64encode(f"{user}:{password}".encode("utf-8")).decode("ascii")
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {credentials}"})
    try:
        with urllib.request.urlopen(request, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as error:
        print(f"not ready: HTTP {error.code} from {url}", file=sys.stderr)
    except OSError as error:  # refused, timed out: Orthanc is not answering
        print(f"not ready: {url}: {error}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
