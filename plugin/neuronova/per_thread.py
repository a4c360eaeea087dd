"""A value per operating-system thread that survives from one Orthanc callback to the next.

orthanc-python gives every callback a fresh Python thread state (measured on 4.0: a
threading.local set in the received-instance callback is gone in the stored-instance callback on
the same thread), so the plugin keys by the thread's identifier instead.
"""

from __future__ import annotations

import threading
from typing import Generic, TypeVar

T = TypeVar("T")


class PerThread(Generic[T]):
    def __init__(self):
        self._values: dict[int, T] = {}  # one entry per Orthanc thread at most; dict operations are atomic

    def set(self, value: T) -> None:
        self._values[threading.get_ident()] = value

    def get(self) -> T | None:
        return self._values.get(threading.get_ident())

    def pop(self) -> T | None:
        return self._values.pop(threading.get_ident(), None)
