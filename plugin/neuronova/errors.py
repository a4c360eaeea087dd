"""One exception hierarchy, mapped in one place to HTTP statuses and DIMSE statuses."""


class NeuroNovaError(Exception):
    """Base of every error the plugin answers to a client."""

    http_status = 500
    # DIMSE C-STORE status for the same failure: 0xC000 "Cannot understand", 0xA700 "Out of resources".
    dimse_status = 0xC000
    retry_after: int | None = None  # seconds: answered as Retry-After, the client asks again then


class BadRequest(NeuroNovaError):
    http_status = 400


class NotDicom(BadRequest):
    """The body (or a ZIP member) is not a readable DICOM file."""


class NotFound(NeuroNovaError):
    http_status = 404


class PatientNotFound(NotFound):
    def __init__(self, patient_id: str):
        super().__init__(f"Patient {patient_id!r} is not known to the EMR directory")
        self.patient_id = patient_id


class PatientRejected(NeuroNovaError):
    """Reconciliation refused the instance: unknown patient, or a study that would be split."""

    http_status = 409


class StudyBusy(NeuroNovaError):
    """Another move of the same study is running (on another server of the cluster)."""

    http_status = 409


class MethodNotAllowed(NeuroNovaError):
    http_status = 405

    def __init__(self, message: str, allow: tuple[str, ...]):
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(NeuroNovaError):
    http_status = 413
    dimse_status = 0xA700


class DirectoryUnavailable(NeuroNovaError):
    """The EMR directory could not be reached or answered garbage."""

    http_status = 503
    dimse_status = 0xA700


class NotReady(NeuroNovaError):
    """The plugin cannot decide yet (Orthanc is starting): the client should retry."""

    http_status = 503
    dimse_status = 0xA700
    retry_after = 1


class Forbidden(NeuroNovaError):
    http_status = 403


class UnsupportedMediaType(NeuroNovaError):
    http_status = 415


class Overloaded(NeuroNovaError):
    """More plugin requests at once than Orthanc's HTTP threads allow: answered at once, retried later."""

    http_status = 503
    dimse_status = 0xA700

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class StorageFull(NeuroNovaError):
    """The storage area's disk is full: nothing is wrong with the file."""

    http_status = 507
    dimse_status = 0xA700


class NotAvailable(NeuroNovaError):
    """A feature this deployment does not offer (yet): says which and why."""

    http_status = 501


class StoreRejected(NeuroNovaError):
    """Orthanc refused to store an instance that we had accepted."""

    http_status = 400


class CoreCannotAnswer(NeuroNovaError):
    """Orthanc's own route failed for a request the plugin handed back to it."""

    http_status = 415


class ConfigError(Exception):
    """Bad plugin configuration: stops the plugin at start, naming the key."""
