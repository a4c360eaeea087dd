"""HTTP primitives shared by every route module: requests, answers, argument checks, and the one
place where errors become answers."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Callable

from .errors import BadRequest, MethodNotAllowed, NeuroNovaError

log = logging.getLogger("neuronova.api")


@dataclass(frozen=True)
class Request:
    method: str
    uri: str = ""
    groups: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: dict, **headers: str) -> Response:
    return Response(status, json.dumps(payload, ensure_ascii=False).encode("utf-8"), headers=headers)


def error_response(error: NeuroNovaError) -> Response:
    headers = {"Allow": ", ".join(error.allow)} if isinstance(error, MethodNotAllowed) else {}
    return json_response(error.http_status, {"success": False, "error": str(error)}, **headers)


Handler = Callable[[Request], Response]


def answer(handler: Handler, request: Request) -> Response:
    """Run a route; every exception becomes a JSON error answer here and nowhere else."""
    try:
        return handler(request)
    except NeuroNovaError as error:
        route = "/".join(request.uri.split("/")[:3])  # the rest of the path may be a patient ID
        log.info("%s %s answered %d (%s)", request.method, route, error.http_status, type(error).__name__)
        log.debug("%s: %s", type(error).__name__, error)  # the text may name a patient: DEBUG only
        return error_response(error)
    except Exception as error:  # a bug: answer clearly instead of Orthanc's bare 500
        log.exception("Unexpected error in a NeuroNova route")
        return json_response(500, {"success": False, "error": f"internal error: {type(error).__name__}: {error}"})


def query_limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit: must be an integer between 1 and {maximum}, got {raw!r}") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit: must be an integer between 1 and {maximum}, got {limit}")
    return limit


def allow(request: Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"method {request.method} not allowed here; use {' or '.join(methods)}", methods)
