"""Fetch the real NIfTI files the NIfTI tests read: they ship inside PyPI wheels (nilearn's MNI ICBM152
templates and a statistical map, dipy's oblique and sheared brains), which are downloaded by pip
(pinned, no dependencies, not installed) and unzipped member by member into tests/data/nifti/.
nibabel's own test images come with nibabel itself (requirements.txt). Run by `make setup`."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(ROOT, "tests", "data", "nifti")
WHEELS = {
    "nilearn==0.14.1": ("nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                        "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
                        "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
                        "nilearn/datasets/data/image_10426.nii.gz"),
    "dipy==1.12.1": ("dipy/data/files/aniso_vox.nii.gz", "dipy/data/files/ascm_out_test.nii.gz",
                     "dipy/data/files/S0_10slices.nii.gz"),
}


def missing() -> dict[str, tuple[str, ...]]:
    return {wheel: members for wheel, members in WHEELS.items()
            if not all(os.path.exists(os.path.join(TARGET, os.path.basename(member))) for member in members)}


def main() -> int:
    wanted = missing()
    if not wanted:
        return 0
    os.makedirs(TARGET, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        for wheel, members in wanted.items():
            subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                            "--no-deps", "--only-binary=:all:", "--dest", folder, wheel], check=True)
            name = wheel.split("==")[0]
            (path,) = [os.path.join(folder, f) for f in os.listdir(folder) if f.startswith(name + "-")]
            with zipfile.ZipFile(path) as archive:
                for member in members:
                    with archive.open(member) as source, open(os.path.join(TARGET, os.path.basename(member)),
                                                              "wb") as target:
                        target.write(source.read())
            print(f"NIfTI test data: {len(members)} files from {wheel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
