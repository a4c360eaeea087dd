"""C-STORE of stored instances to a DICOM peer with pynetdicom, for what Orthanc 1.10 cannot send.

DCMTK 3.6.7 (Orthanc's DICOM stack) does not know HTJ2K, so Orthanc can neither propose nor
decode it. Here every instance gets presentation contexts for its own transfer syntax and for
what it can be turned into, and is sent in the best one the peer accepted:

1. its stored transfer syntax, untouched (HTJ2K to a peer that takes HTJ2K);
2. for HTJ2K only: JPEG 2000 lossless, re-encoded by the plugin's own transcoder (verified
   bit-exact, as at ingest), when the peer accepts it (and ``prefer_j2k`` is on);
3. Explicit or Implicit VR Little Endian, decoded by uncompressed.py.

Each instance gets its own outcome (DIMSE status or the reason it could not be sent), like the
counts in Orthanc's own store jobs; one failure does not stop the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from io import BytesIO
from typing import Callable, Iterable

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless, UID

from .rendering import HTJ2K_SYNTAXES
from .transcoder import TranscodeSettings, transcode
from .uncompressed import to_explicit_little_endian

log = logging.getLogger("neuronova.sender")

UNCOMPRESSED = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
MAX_CONTEXTS = 128  # per association (PS3.8: odd context IDs 1..255)
_J2K_SETTINGS = TranscodeSettings(target="j2k", verify=True, fallback_to_j2k=False, min_pixel_bytes=0)


@dataclass(frozen=True)
class Peer:
    aet: str
    host: str
    port: int
    local_aet: str
    timeout: float = 30.0  # seconds, for association, DIMSE and network

    @classmethod
    def from_orthanc(cls, configuration: dict, local_aet: str, timeout: float = 30.0) -> "Peer":
        """From Orthanc's /modalities/{id}/configuration (its Timeout wins when set)."""
        return cls(aet=configuration["AET"], host=configuration["Host"], port=int(configuration["Port"]),
                   local_aet=local_aet, timeout=float(configuration.get("Timeout") or timeout))


@dataclass(frozen=True)
class Item:
    """One stored instance to send."""

    instance_id: str
    sop_class: str
    transfer_syntax: str
    load: Callable[[], bytes]  # the stored file


@dataclass
class Outcome:
    instance_id: str
    sop_instance_uid: str = ""
    sent_as: str = ""  # the transfer syntax actually sent
    status: int | None = None  # DIMSE status; None when nothing was sent
    error: str = ""

    @property
    def ok(self) -> bool:
        # 0x0000 success, 0xBxxx warnings (PS3.4 B.2.3): the peer stored the instance
        return self.status is not None and (self.status == 0 or self.status & 0xF000 == 0xB000)

    def to_json(self) -> dict:
        answer = {"ID": self.instance_id, "SOPInstanceUID": self.sop_instance_uid, "Success": self.ok}
        if self.sent_as:
            answer["TransferSyntax"] = self.sent_as
        if self.status is not None:
            answer["Status"] = f"0x{self.status:04X}"
        if self.error:
            answer["Error"] = self.error
        return answer


def candidate_syntaxes(stored: str, prefer_j2k: bool = True) -> list[str]:
    """What an instance stored in this syntax can be sent as, best first."""
    if stored in UNCOMPRESSED:
        return [stored, *(s for s in UNCOMPRESSED if s != stored)]
    if stored in HTJ2K_SYNTAXES:
        return [stored, *([JPEG2000Lossless] if prefer_j2k else []), *UNCOMPRESSED]
    return [stored, *UNCOMPRESSED]


def presentation_contexts(items: Iterable[Item], prefer_j2k: bool = True) -> list[tuple[str, list[str]]]:
    """(SOP class, [transfer syntaxes]) to propose: one context per compressed syntax (a peer accepts
    one syntax per context), one for the uncompressed syntaxes together."""
    contexts: dict[tuple[str, tuple[str, ...]], None] = {}
    for item in items:
        for syntax in candidate_syntaxes(item.transfer_syntax, prefer_j2k):
            if syntax in UNCOMPRESSED:
                contexts[(item.sop_class, UNCOMPRESSED)] = None
            else:
                contexts[(item.sop_class, (syntax,))] = None
    return [(sop_class, list(syntaxes)) for sop_class, syntaxes in contexts]


def batches(items: list[Item], prefer_j2k: bool = True) -> list[list[Item]]:
    """Split the items so that no association proposes more than MAX_CONTEXTS contexts."""
    groups: dict[str, list[Item]] = {}
    for item in items:
        groups.setdefault(item.sop_class, []).append(item)
    result: list[list[Item]] = []
    current: list[Item] = []
    for group in groups.values():
        if current and len(presentation_contexts(current + group, prefer_j2k)) > MAX_CONTEXTS:
            result.append(current)
            current = []
        current = current + group
    if current:
        result.append(current)
    return result


def send(peer: Peer, items: list[Item], originator: tuple[str, int] | None = None,
         prefer_j2k: bool = True) -> list[Outcome]:
    """C-STORE every item to the peer; one outcome per item, in order. Never raises for a peer problem."""
    outcomes: list[Outcome] = []
    for batch in batches(items, prefer_j2k):
        outcomes += _send_batch(peer, batch, originator, prefer_j2k)
    return outcomes


def _new_ae(peer: Peer, contexts: list[tuple[str, list[str]]]):
    from pynetdicom import AE  # imported late: only sending needs it

    ae = AE(ae_title=peer.local_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = peer.timeout
    ae.connection_timeout = peer.timeout
    for sop_class, syntaxes in contexts:
        ae.add_requested_context(sop_class, syntaxes)
    return ae


def _send_batch(peer: Peer, items: list[Item], originator, prefer_j2k: bool) -> list[Outcome]:
    contexts = presentation_contexts(items, prefer_j2k)
    ae = _new_ae(peer, contexts)
    outcomes = [Outcome(item.instance_id) for item in items]
    association = None
    try:
        for item, outcome in zip(items, outcomes):
            if association is None or not association.is_established:
                association = ae.associate(peer.host, peer.port, ae_title=peer.aet)
                if not association.is_established:
                    reason = "rejected" if association.is_rejected else "aborted" if association.is_aborted \
                        else "not established"
                    for pending in outcomes[outcomes.index(outcome):]:
                        pending.error = f"association with {peer.aet}@{peer.host}:{peer.port} {reason}"
                    break
            _send_one(association, item, outcome, originator, prefer_j2k)
    finally:
        if association is not None and association.is_established:
            association.release()
        ae.shutdown()
    for outcome in outcomes:
        if not outcome.ok:
            log.warning("C-STORE of instance %s (SOP Instance %s) to %s failed: %s", outcome.instance_id,
                        outcome.sop_instance_uid or "?", peer.aet, outcome.error or f"status {outcome.status}")
    return outcomes


def _accepted(association, sop_class: str) -> set[str]:
    return {str(cx.transfer_syntax[0]) for cx in association.accepted_contexts
            if cx.abstract_syntax == sop_class and cx.as_scu}


def _send_one(association, item: Item, outcome: Outcome, originator, prefer_j2k: bool) -> None:
    accepted = _accepted(association, item.sop_class)
    try:
        data = item.load()
        dataset = None
        for syntax in candidate_syntaxes(item.transfer_syntax, prefer_j2k):
            if syntax not in accepted:
                continue
            if syntax == item.transfer_syntax:
                dataset = pydicom.dcmread(BytesIO(data))
            elif syntax == JPEG2000Lossless:
                result = transcode(to_explicit_little_endian(data), _J2K_SETTINGS)
                if not result.changed:
                    log.info("instance %s: JPEG 2000 re-encoding declined (%s), sending uncompressed",
                             item.instance_id, result.reason)
                    continue
                dataset = pydicom.dcmread(BytesIO(result.data))
            else:  # Explicit or Implicit VR Little Endian: pynetdicom converts between the two
                dataset = pydicom.dcmread(BytesIO(to_explicit_little_endian(data)))
            outcome.sent_as = syntax
            break
        if dataset is None:
            outcome.error = (f"{association.acceptor.ae_title} accepted none of "
                             f"{', '.join(UID(s).name for s in candidate_syntaxes(item.transfer_syntax, prefer_j2k))}"
                             f" for SOP class {UID(item.sop_class).name}")
            return
        outcome.sop_instance_uid = str(dataset.get("SOPInstanceUID", ""))
        kwargs = {"originator_aet": originator[0], "originator_id": originator[1]} if originator else {}
        status = association.send_c_store(dataset, **kwargs)
    except Exception as error:  # one instance's trouble (decoding, encoding, network) stays its own
        outcome.error = f"{type(error).__name__}: {error}"
        return
    if status is None or "Status" not in status:
        outcome.error = "no C-STORE response (timeout or aborted association)"
        return
    outcome.status = int(status.Status)
    if not outcome.ok:
        outcome.error = f"C-STORE status 0x{outcome.status:04X}"
