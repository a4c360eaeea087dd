"""Lossless JPEG 2000 codec backends, one small module each.

Every backend offers the same surface so the transcoder can try them in turn:
``NAME``, ``TRANSFER_SYNTAX`` (a pydicom UID), ``is_available()``,
``missing()`` (why it is unavailable, or None), ``encode(frame, bits_stored, rct)``
and ``decode(codestream)``.
"""


class CodecUnavailable(RuntimeError):
    """The backend's native library is missing; the message names what to install."""


try:
    import imagecodecs
except ImportError as error:  # reported precisely by missing_in_imagecodecs()
    imagecodecs = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None


def missing_in_imagecodecs(module, label: str, codec: str, library: str, function: str) -> str | None:
    """What is missing for imagecodecs' `codec` to work (`module`: the backend's imagecodecs, None
    when its import failed), or None."""
    if module is None:
        return f"{label} needs the Python package 'imagecodecs' (import failed: {_IMPORT_ERROR})"
    found = getattr(module, codec, None)
    if found is None or not getattr(found, "available", False):
        return (f"{label} needs imagecodecs built with {library}; imagecodecs "
                f"{getattr(module, '__version__', '?')} has no {function}")
    return None


from . import htj2k, j2k  # noqa: E402  (the backends import CodecUnavailable from here)

BY_SYNTAX = {str(backend.TRANSFER_SYNTAX): backend for backend in (htj2k, j2k)}

__all__ = ["BY_SYNTAX", "CodecUnavailable", "htj2k", "j2k"]
