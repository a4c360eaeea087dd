"""NeuroNova ingest: patient assignment and lossless HTJ2K inside Orthanc.

Everything in this package is plain Python that knows nothing of Orthanc; the
adapter (`neuronova.orthanc_adapter`) is the one place that talks to the SDK.
"""
