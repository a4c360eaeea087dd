"""What the plugin needs from the PACS it runs in; the Orthanc adapter provides it, tests may fake it."""

from __future__ import annotations

from typing import Protocol


class Pacs(Protocol):
    def store(self, dicom: bytes) -> dict:
        """Store one DICOM file as any ingest would (POST /instances); Orthanc's JSON answer.
        Raises StoreRejected."""

    def transfer_syntax(self, instance_id: str) -> str:
        """The stored file's transfer syntax UID. Raises NotFound for an unknown instance."""

    def kept_codestreams(self, instance_id: str) -> tuple[str, list] | None:
        """(syntax, one codestream per frame) when the storage area keeps the instance as HTJ2K."""

    def plus_arrives_as_space(self) -> bool:
        """Does Orthanc hand a "+" of a request's path over as a space (1.12 does, 1.10 does not)?"""

    def core_get(self, uri: str) -> bytes:
        """Orthanc's own answer to GET uri (query string allowed), bypassing the plugin's routes."""

    def core_post(self, uri: str, body: bytes) -> bytes:
        """Orthanc's own answer to POST uri, bypassing the plugin's routes."""

    def core_delete(self, uri: str) -> None:
        """Orthanc's own DELETE uri (an instance the plugin stored and must take back, or moved). Raises NotFound."""

    def study_owner(self, study_instance_uid: str) -> dict[str, str] | None:
        """The four patient tags of the study stored under this StudyInstanceUID, or None."""
