"""The EMR patient directory: one interface, one backend per EMR kind."""

from .model import Patient, GENDERS, patient_from_json
from .base import PatientDirectory
from .registry import EmbeddedRegistry

__all__ = ["Patient", "GENDERS", "patient_from_json", "PatientDirectory", "EmbeddedRegistry"]
