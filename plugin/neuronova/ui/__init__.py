"""The browser side of the plugin: the upload dialog, the RIS dashboard and the Orthanc Explorer extension."""

from .routes import StudyList, StaticFiles, explorer_extension_js

__all__ = ["StaticFiles", "StudyList", "explorer_extension_js"]
