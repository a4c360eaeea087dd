"""HTTP primitives shared by every route module: requests, answers, argument checks, and the one
place where errors become answers."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

from .errors import BadRequest, Forbidden, MethodNotAllowed, NeuroNovaError, Overloaded, UnsupportedMediaType

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
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    return json_response(error.http_status, {"success": False, "error": str(error)}, **headers)


Handler = Callable[[Request], Response]


def answer(handler: Handler, request: Request) -> Response:
    """Run a route; every exception becomes a JSON error answer here and nowhere else."""
    try:
        if request.method not in SAFE_METHODS:
            refuse_cross_site(request)
        return handler(request)
    except NeuroNovaError as error:
        route = "/".join(request.uri.split("/")[:3])  # the rest of the path may be a patient ID
        log.info("%s %s answered %d (%s)", request.method, route, error.http_status, type(error).__name__)
        log.debug("%s: %s", type(error).__name__, error)  # the text may name a patient: DEBUG only
        return error_response(error)
    except Exception as error:  # a bug: a clear answer without internals (no traceback, no paths)
        reference = uuid.uuid4().hex[:8]
        route = "/".join(request.uri.split("/")[:3])
        log.error("%s %s failed unexpectedly (%s, reference %s)", request.method, route, type(error).__name__, reference)
        log.debug("reference %s", reference, exc_info=error)  # values in the traceback may name a patient
        return json_response(500, {"success": False, "error": f"internal error (reference {reference} in Orthanc's "
                                                              "log)"})


def query_limit(request: Request, default: int, maximum: int) -> int:
    raw = request.query.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise BadRequest(f"limit: must be an integer between 1 and {maximum}, got {raw!r}") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"limit: must be an integer between 1 and {maximum}, got {limit}")
    return limit


def query_offset(request: Request) -> int:
    raw = request.query.get("offset", "0")
    if not raw.isdigit():
        raise BadRequest(f"offset: must be 0 or a positive integer, got {raw!r}")
    return int(raw)


def allow(request: Request, *methods: str) -> None:
    if request.method not in methods:
        raise MethodNotAllowed(f"method {request.method} not allowed here; use {' or '.join(methods)}", methods)


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# What a page on another site can send without a CORS preflight (a "simple" request).
CROSS_SITE_FORM_TYPES = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
MAX_JSON_DEPTH = 20  # a patient record nests 3 deep; Python's parser recurses on Orthanc's small HTTP-thread stacks


def refuse_cross_site(request: Request) -> None:
    """A state-changing request made by a page of another site, with or without authentication (the
    visitor's browser sends the credentials): refused. Browsers say where a request comes from in
    Sec-Fetch-Site, older ones only in Origin; clients that are not browsers send neither."""
    site = request.headers.get("sec-fetch-site", "")
    if site:
        if site not in ("same-origin", "none"):
            raise Forbidden(f"cross-site request refused (Sec-Fetch-Site: {site})")
        return
    origin = request.headers.get("origin", "")
    if not origin:
        return
    hosts = {request.headers.get("host", "")} | {
        value.strip() for value in request.headers.get("x-forwarded-host", "").split(",") if value.strip()}
    if origin == "null" or urlsplit(origin).netloc not in hosts:
        raise Forbidden("cross-site request refused (its Origin is not this server)")


def authenticated_user(request: Request, authentication: bool) -> str:
    """The user name of the request's HTTP Basic credentials, which Orthanc has checked when its
    authentication is on ("AuthenticationEnabled"); "" otherwise (an unchecked name is nobody's)."""
    if not authentication:
        return ""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(credentials.strip(), validate=True).decode("utf-8").partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return ""


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def require_content_type(request: Request, *accepted: str) -> str:
    """The body's media type, one of `accepted` ("" when a client sends none and that is accepted)."""
    media_type = content_type(request)
    if media_type not in accepted:
        raise UnsupportedMediaType(f"Content-Type {media_type or '(none)'} not accepted here; use "
                                   f"{' or '.join(kind for kind in accepted if kind)}")
    return media_type


def json_body(request: Request) -> object:
    """The request's JSON body (Content-Type application/json), nesting checked before it is parsed."""
    require_content_type(request, "application/json")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("body: not UTF-8 text") from None
    depth = deepest = 0
    in_string = escaped = False
    for character in text:  # brackets outside strings, without recursion
        if in_string:
            if escaped:
                escaped = False
            elif character == "\\":
                escaped = True
            elif character == '"':
                in_string = False
        elif character == '"':
            in_string = True
        elif character in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > MAX_JSON_DEPTH:
                raise BadRequest(f"body: JSON nested more than {MAX_JSON_DEPTH} deep")
        elif character in "]}":
            depth -= 1
    try:
        return json.loads(text)
    except ValueError as error:
        raise BadRequest(f"body: not valid JSON ({error})") from None


class RequestGate:
    """At most `slots` plugin requests at once. A plugin route may call Orthanc's REST API on
    loopback, which needs another of Orthanc's HTTP threads: with every thread in a plugin route
    waiting for one, Orthanc froze (100 concurrent uploads, measured). Beyond the slots a request is
    answered 503 with Retry-After at once, holding nothing."""

    def __init__(self, slots: int, retry_after: int):
        self.slots = slots
        self.retry_after = retry_after
        self._free = threading.BoundedSemaphore(slots)

    def __call__(self, handler: Handler) -> Handler:
        def gated(request: Request) -> Response:
            if not self._free.acquire(blocking=False):
                raise Overloaded(f"the server is busy ({self.slots} NeuroNova requests at once): retry in "
                                 f"{self.retry_after} s", self.retry_after)
            try:
                return handler(request)
            finally:
                self._free.release()
        return gated
