"""GET /neuronova/ready: 503 with Retry-After until the stored studies' patients are read, then 200."""

from __future__ import annotations

import json

from neuronova.api import readiness
from neuronova.http import Request, answer
from neuronova.reconcile import StudyOwners


def test_not_ready_until_the_stored_studies_are_read_then_ready():
    owners = StudyOwners()
    route = readiness(owners)
    request = Request(method="GET", uri="/neuronova/ready")

    starting = answer(route, request)
    assert starting.status == 503
    assert starting.headers["Retry-After"] == "1"
    body = json.loads(starting.body)
    assert body["success"] is False and "starting" in body["error"]

    owners.load({"1.2.3": {"PatientID": "P-1"}})
    ready = answer(route, request)
    assert (ready.status, json.loads(ready.body)) == (200, {"success": True, "ready": True})


def test_only_get():
    response = answer(readiness(StudyOwners({})), Request(method="DELETE", uri="/neuronova/ready",
                                                          headers={"sec-fetch-site": "same-origin"}))
    assert response.status == 405
