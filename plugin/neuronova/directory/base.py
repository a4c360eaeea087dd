"""What every EMR directory backend offers the routes and the ingest pipeline."""

from __future__ import annotations

from typing import Protocol

from .model import Patient


class PatientDirectory(Protocol):
    #: False for backends that mirror a hospital EMR (PUT answers 405).
    writable: bool

    def get(self, patient_id: str) -> Patient | None:
        """The patient with this canonical ID, or None. Raises DirectoryUnavailable."""

    def resolve(self, identifier: str, issuer: str = "") -> Patient | None:
        """The patient known by this identifier: its canonical ID first, else one of its other
        identifiers (matching the issuer when one is given). Raises DirectoryUnavailable."""

    def search(self, text: str, limit: int) -> tuple[list[Patient], int]:
        """Partial, case-insensitive match on ID or name: (first `limit` patients, total matches)."""

    def put(self, patient: Patient) -> bool:
        """Create or update one patient; True when created."""
