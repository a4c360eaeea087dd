"""DICOM-level helpers: reading and validating uploads, patient tag rewriting."""
