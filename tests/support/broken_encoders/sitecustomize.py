"""Test-only fault injection: Orthanc's embedded Python imports this at start (it is put first on
PYTHONPATH by the test), and every codec backend's encoder then fails as a broken library would."""

from neuronova.storage.codec import htj2k, j2k


def _broken_encoder(*args, **kwargs):
    raise RuntimeError("injected encoder failure (tests/support/broken_encoders)")


htj2k.encode = _broken_encoder
j2k.encode = _broken_encoder
