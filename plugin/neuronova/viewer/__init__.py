"""The way out to people: the OHIF Viewer served by the plugin, reading this Orthanc's DICOMweb."""

from .routes import Viewer, explorer_js, viewer_path

__all__ = ["Viewer", "explorer_js", "viewer_path"]
