"""The browser side of the plugin: the upload dialog, the RIS dashboard and the Orthanc Explorer extension."""

from .routes import StaticFiles, StudyList, app_redirect, explorer_extension_js

__all__ = ["StaticFiles", "StudyList", "app_redirect", "explorer_extension_js"]
