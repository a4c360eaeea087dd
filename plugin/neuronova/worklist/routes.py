"""The worklist's REST routes."""

from __future__ import annotations

from ..http import Handler, Request, Response, allow, authenticated_user, json_response, query_limit, query_offset

PAGE, MAX_PAGE = 50, 500
from .listing import Worklist
from .move import StudyMover
from .reverify import Reverifier


class WorklistRoutes:
    def __init__(self, worklist: Worklist, mover: StudyMover, reverifier: Reverifier, authentication: bool):
        self.worklist = worklist
        self.mover = mover
        self.reverifier = reverifier
        self.authentication = authentication  # Orthanc checks the Basic credentials: their user name is trusted

    def routes(self) -> list[tuple[str, Handler]]:
        return [
            ("/neuronova/worklist", self.list),
            ("/neuronova/worklist/reverify", self.reverify),
            ("/neuronova/studies/([^/]+)/patient/(.+)", self.move),
        ]

    def list(self, request: Request) -> Response:
        allow(request, "GET")
        return json_response(200, self.worklist.items(query_limit(request, PAGE, MAX_PAGE), query_offset(request)))

    def move(self, request: Request) -> Response:
        """POST /neuronova/studies/{Orthanc study ID}/patient/{EMR patient ID}."""
        allow(request, "POST")
        study, patient_id = request.groups
        return json_response(200, self.mover.move(study, patient_id, authenticated_user(request, self.authentication)))

    def reverify(self, request: Request) -> Response:
        """POST: re-verify the unverified studies now (the schedule and the EMR's return do it unasked)."""
        allow(request, "POST")
        return json_response(200, {"success": True, **self.reverifier.run_once()})
