"""Orthanc's image routes on core URIs (preview, rendered, image-uint8/-uint16/-int16, matlab, numpy):
the plugin answers for HTJ2K instances (rendering.py) and hands every other instance back to
Orthanc's built-in API.

`RestApiGet` passes no HTTP headers, so the core always answers PNG. When the client's Accept
header asks for JPEG or PAM, the core's PNG is converted here: PAM carries the very same samples;
JPEG is encoded from the same 8-bit pixels at the requested quality.
"""

from __future__ import annotations

from urllib.parse import quote

from . import rendering
from .http import Request, Response, allow
from .pacs import Pacs

ROUTES = "preview|rendered|image-uint8|image-uint16|image-int16|matlab|numpy"


class ImageRoutes:
    def __init__(self, pacs: Pacs):
        self.pacs = pacs

    def routes(self) -> list[tuple[str, object]]:
        return [
            (f"/instances/([^/]+)/({ROUTES})", self.image),
            (f"/instances/([^/]+)/frames/([0-9]+)/({ROUTES})", self.image),
        ]

    def image(self, request: Request) -> Response:
        allow(request, "GET")
        instance_id, mode = request.groups[0], request.groups[-1]
        frame = int(request.groups[1]) if len(request.groups) == 3 else 0
        accept = request.headers.get("accept")
        htj2k = self.pacs.transfer_syntax(instance_id) in rendering.HTJ2K_SYNTAXES
        if mode in ("matlab", "numpy"):
            return self._raw(request, instance_id, frame, mode, htj2k)
        if htj2k:
            body, mime = rendering.answer_image(self.pacs.instance_file(instance_id), frame, mode,
                                                request.query, accept)
            return Response(200, body, mime)
        return self._core(request, mode, accept)

    def _raw(self, request: Request, instance_id: str, frame: int, mode: str, htj2k: bool) -> Response:
        """matlab (one frame) and numpy (one frame, or every frame at instance level)."""
        mime = "text/plain" if mode == "matlab" else "application/octet-stream"
        if not htj2k:
            return Response(200, self.pacs.core_get(self._core_uri(request)), mime)
        dicom = self.pacs.instance_file(instance_id)
        if mode == "matlab":
            return Response(200, rendering.matlab_frame(dicom, frame).encode(), mime)
        compress = rendering.parse_boolean(request.query, "compress", False)
        rescale = rendering.parse_boolean(request.query, "rescale", True)
        array = rendering.numpy_array(dicom, frame if len(request.groups) == 3 else None, rescale)
        return Response(200, rendering.encode_numpy(array, compress), mime)

    @staticmethod
    def _core_uri(request: Request) -> str:
        query = "&".join(f"{quote(k)}={quote(v)}" if v else quote(k) for k, v in request.query.items())
        return request.uri + ("?" + query if query else "")

    def _core(self, request: Request, mode: str, accept: str | None) -> Response:
        answer = self.pacs.core_get(self._core_uri(request))
        if not answer.startswith(b"\x89PNG"):  # not expected from Orthanc 1.10; pass it on as it is
            return Response(200, answer, "image/jpeg" if answer.startswith(b"\xff\xd8") else "application/octet-stream")
        mime = rendering.acceptable(accept, mode)
        if mime == rendering.PNG:
            return Response(200, answer, mime)
        image = rendering.from_png(answer)
        if mode == rendering.INT16:
            image = image.view("int16")
        return Response(200, rendering.encode(image, mime, rendering.jpeg_quality(request.query)), mime)

