"""REST uploads, C-STORE associations and dashboard polling at the same time must not deadlock Orthanc.

orthanc-python 4.0 keeps the GIL during SDK calls; Orthanc runs the plugin's ingest callbacks under
one lock. A plugin that stores with RestApiPost while a C-STORE is arriving deadlocks (it did, before
the plugin stored through loopback HTTP): this test sends both kinds at once, several clients each.
"""

import threading

import requests

from support.dicom_files import make_series, parse
from support.dicom_net import storescu


def test_rest_uploads_cstore_and_polling_at_once_all_complete(pacs, tmp_path):
    rest = make_series(tmp_path, 40, base="693_UNCR.dcm", PatientID="P-2024-001234")
    dimse = make_series(tmp_path, 40, base="693_UNCR.dcm", PatientID="CT-LOCAL-1")
    uploads = make_series(tmp_path, 6, base="693_UNCR.dcm", PatientID="SCANNED-7")
    failures: list[str] = []

    def rest_client(paths, route):
        session = requests.Session()
        for path in paths:
            answer = session.post(pacs.url + route, data=open(path, "rb").read(), timeout=60)
            if answer.status_code != 200:
                failures.append(f"{route}: HTTP {answer.status_code} {answer.text[:200]}")

    def dimse_client(paths):
        sent = storescu(pacs.dicom_port, paths)
        if sent.returncode != 0:
            failures.append(f"storescu: {sent.returncode} {sent.stderr[-200:]}")

    def poller(stop):
        while not stop.is_set():
            for uri in ("/neuronova/studies", "/tools/metrics-prometheus", "/neuronova/history?limit=5"):
                if requests.get(pacs.url + uri, timeout=60).status_code != 200:
                    failures.append(f"GET {uri} failed")

    stop = threading.Event()
    clients = [threading.Thread(target=rest_client, args=(rest[i::2], "/instances")) for i in range(2)]
    clients += [threading.Thread(target=rest_client, args=(uploads[i::2], "/neuronova/upload/P-2024-001235"))
                for i in range(2)]
    clients += [threading.Thread(target=dimse_client, args=(dimse[i::4],)) for i in range(4)]
    polling = threading.Thread(target=poller, args=(stop,))
    polling.start()
    for client in clients:
        client.start()
    for client in clients:
        client.join(timeout=180)
    stop.set()
    polling.join(timeout=60)

    assert not any(client.is_alive() for client in clients + [polling]), "a client hung: Orthanc deadlocked"
    assert failures == []
    stored = {parse(open(path, "rb").read()).SOPInstanceUID for path in rest + dimse + uploads}
    assert len(pacs.instances()) == len(stored)
