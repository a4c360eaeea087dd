"""The OHIF Viewer's prebuilt dist/ (npm @ohif/app, installed by `make setup`), made to run under any
path prefix with this Orthanc's own DICOMweb root and no request leaving the origin.

The dist/ is built for the site root ("/"): its index.html sets ``window.PUBLIC_URL="/"`` and names
every file by an absolute path, and each webpack entry (the app and its web workers) sets its public
path to "/" at load. Nothing is rebuilt; three things are changed as the files are answered:
- index.html: a ``<base href>`` pointing at the viewer's root, relative to the page asked (so a
  reverse proxy's prefix is kept), file names relative to it, ``PUBLIC_URL`` (OHIF's router base)
  taken from it, and no service worker, web-app manifest or start-up images;
- app-config.js: the plugin's own (see app_config_js), never the dist's demo configuration, which
  points at a public server;
- the webpack entries: the public path computed from the entry's own URL, as webpack's "auto"
  public path does; the style sheets: their font by a relative URL.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

PINNED_PACKAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ohif")
DEFAULT_DIST = os.path.join(PINNED_PACKAGE, "node_modules", "@ohif", "app", "dist")

_PUBLIC_URL_SET = 'window.PUBLIC_URL="/"'
_PUBLIC_URL_FROM_BASE = "window.PUBLIC_URL=new URL(document.baseURI).pathname"
_WEBPACK_PUBLIC_PATH = b'__webpack_require__.p = "/";'
# The folder of the running script: the app bundle (document.currentScript) or a web worker (its location).
_WEBPACK_PUBLIC_PATH_AUTO = (b'__webpack_require__.p = new URL("./", (typeof document !== "undefined" && '
                             b'document.currentScript && document.currentScript.src) || self.location.href).pathname;')
# Elements of index.html that would fetch what the plugin does not serve or want: the service worker's
# loader, the web-app manifest, icons and start-up images for home screens (absolute paths, many files).
_DROPPED_ELEMENTS = re.compile(
    r'<link rel="(?:manifest|apple-touch-icon|apple-touch-startup-image|yandex-tableau-widget)"[^>]*>'
    r'|<meta name="msapplication-[^>]*>'
    r'|<script[^>]*src="/init-service-worker\.js"[^>]*></script>')
_ROOT_RELATIVE = re.compile(r'(\s(?:href|src))="/(?!/)')


class ViewerMissing(Exception):
    """The OHIF files are not there or not the kind this module knows; the message says what to do."""


@dataclass(frozen=True)
class OhifDist:
    """One OHIF dist/ folder, checked at start."""

    directory: str
    version: str
    index_html: str  # as built, changed per request by index_for

    @classmethod
    def load(cls, directory: str = DEFAULT_DIST) -> OhifDist:
        index_path = os.path.join(directory, "index.html")
        if not os.path.isfile(index_path):
            hint = ("run `make setup` (it installs the pinned @ohif/app with npm)" if directory == DEFAULT_DIST
                    else "NeuroNova.Viewer.Directory must name the dist/ folder of an @ohif/app package")
            raise ViewerMissing(f"the OHIF Viewer is not installed (no {index_path}): {hint}")
        with open(index_path, encoding="utf-8") as index_file:
            index_html = index_file.read()
        if _PUBLIC_URL_SET not in index_html or "<head>" not in index_html:
            raise ViewerMissing(f"{index_path} is not an OHIF Viewer 3 build for the site root "
                                f"(no {_PUBLIC_URL_SET}): install the pinned @ohif/app with `make setup`")
        return cls(directory, _package_version(directory), index_html)

    def index_for(self, depth: int) -> bytes:
        """index.html for a page `depth` folders below the viewer's root (0: the root itself)."""
        base = "../" * depth or "./"
        html = _DROPPED_ELEMENTS.sub("", self.index_html)
        html = _ROOT_RELATIVE.sub(r'\1="', html)
        html = html.replace(_PUBLIC_URL_SET, _PUBLIC_URL_FROM_BASE)
        html = html.replace("<head>", f'<head><base href="{base}">', 1)
        return html.encode("utf-8")

    def file(self, path: str) -> bytes:
        with open(path, "rb") as served:
            data = served.read()
        if path.endswith(".js") and _WEBPACK_PUBLIC_PATH in data:
            data = data.replace(_WEBPACK_PUBLIC_PATH, _WEBPACK_PUBLIC_PATH_AUTO)
        elif path.endswith(".css"):
            data = re.sub(rb"url\(/(?!/)", b"url(", data)
        return data


def pinned_version(package_dir: str = PINNED_PACKAGE) -> str:
    """The @ohif/app version the project pins (ohif/package.json)."""
    with open(os.path.join(package_dir, "package.json"), encoding="utf-8") as package_file:
        return json.load(package_file)["dependencies"]["@ohif/app"]


def _package_version(dist: str) -> str:
    try:
        with open(os.path.join(os.path.dirname(dist), "package.json"), encoding="utf-8") as package_file:
            return str(json.load(package_file).get("version", "?"))
    except (OSError, ValueError):
        return "?"


def app_config_js(dicomweb_root: str) -> bytes:
    """OHIF's window.config: one DICOMweb data source, this Orthanc's own, by a URL relative to the
    viewer's root (the page's <base>), so that a reverse proxy's prefix and Orthanc's authentication
    (the browser's credentials for this origin) apply; no study list (the viewer opens the study it
    is given); frames asked as stored (``transfer-syntax=*``: HTJ2K from the storage area)."""
    relative_root = "../../" + dicomweb_root.strip("/")
    config = {
        "routerBasename": None,  # OHIF takes window.PUBLIC_URL, which index.html sets from <base>
        "extensions": [],
        "modes": [],
        "showStudyList": False,
        "investigationalUseDialog": {"option": "never"},
        "customizationService": [{"ohif.tours": {"$set": []}}],  # no onboarding tour over the images
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "maxNumberOfWebWorkers": 2,
        "defaultDataSourceName": "orthanc",
        "dataSources": [{
            "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
            "sourceName": "orthanc",
            "configuration": {
                "friendlyName": "NeuroNova PACS",
                "name": "orthanc",
                "wadoUriRoot": relative_root,
                "qidoRoot": relative_root,
                "wadoRoot": relative_root,
                "qidoSupportsIncludeField": False,
                "supportsReject": False,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                "supportsFuzzyMatching": False,
                "supportsWildcard": True,
                "staticWado": True,
                "singlepart": "bulkdata,video",
                "acceptHeader": ["multipart/related; type=application/octet-stream; transfer-syntax=*"],
                "omitQuotationForMultipartRequest": True,
                "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            },
        }],
    }
    return ("/* Written by the NeuroNova plugin for this Orthanc (neuronova/viewer/ohif.py). */\n"
            f"window.config = {json.dumps(config, indent=2)};\n").encode()
