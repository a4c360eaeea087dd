"""NIfTI import, a way in: research volumes become standard DICOM objects that go through the
ordinary ingest path (reconciliation, storage area). nibabel reads, highdicom builds the Parametric
Map and Segmentation objects; this package holds the geometry and the policy."""
