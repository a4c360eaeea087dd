"""Lossless JPEG 2000 codec backends, one small module each.

Every backend offers the same surface so the transcoder can try them in turn:
``NAME``, ``TRANSFER_SYNTAX`` (a pydicom UID), ``is_available()``,
``missing()`` (why it is unavailable, or None), ``encode(frame, bits_stored, rct)``
and ``decode(codestream)``.
"""


class CodecUnavailable(RuntimeError):
    """The backend's native library is missing; the message names what to install."""


from . import htj2k, j2k  # noqa: E402  (the backends import CodecUnavailable from here)

BACKENDS = {htj2k.NAME: htj2k, j2k.NAME: j2k}

__all__ = ["BACKENDS", "CodecUnavailable", "htj2k", "j2k"]
