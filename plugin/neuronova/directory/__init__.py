"""The EMR patient directory: one interface, one backend per EMR kind."""

from .model import GENDERS, Identifier, Patient, patient_from_json
from .base import PatientDirectory
from .registry import EmbeddedRegistry

__all__ = ["Identifier", "Patient", "GENDERS", "patient_from_json", "PatientDirectory", "EmbeddedRegistry"]
