"""NIfTI volumes through the upload dialog in headless Chromium: a new study of the chosen patient, then
a float map added to that study with the dialog's study picker; stored under the EMR patient."""

import shutil

from playwright.sync_api import expect
from support.nifti_files import path

HONG = "P-2024-001234 - Hong^Gildong (1980-01-15)"


def test_nifti_new_study_then_added_to_it_through_the_dialog(pacs, browsing, tmp_path):
    brain, floats = tmp_path / "oblique brain.nii.gz", tmp_path / "ascm_out_test.nii.gz"
    shutil.copy(path("aniso_vox.nii.gz"), brain)
    shutil.copy(path("ascm_out_test.nii.gz"), floats)
    page = browsing(pacs).page
    page.goto("/neuronova/app/index.html")

    page.get_by_role("button", name="Upload DICOM", exact=True).click()
    page.set_input_files("#nn-upload-files", [str(brain)])
    expect(page.locator("#nn-upload-refused")).to_be_hidden()
    expect(page.locator("#nn-upload-nifti")).to_be_visible()
    expect(page.locator("#nn-upload-study option").first).to_have_text("A new study of the chosen patient")
    page.fill("#nn-upload-patient-search", "Hong")
    expect(page.locator("#nn-upload-patient option", has_text=HONG)).to_have_count(1)
    page.select_option("#nn-upload-patient", label=HONG)
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-success")).to_be_visible(timeout=60000)
    expect(page.locator("#nn-upload-file-list .nn-file-status")).to_have_text("1 series of 24 instances stored")
    (study,) = pacs.get("/studies?expand").json()
    assert study["PatientMainDicomTags"]["PatientID"] == "P-2024-001234"
    assert len(study["Series"]) == 1
    expect(page.locator("#nn-studies-body tr", has_text="P-2024-001234").first).to_be_visible(timeout=30000)

    # again, into that study: the study picker lists it
    page.click("#nn-upload-cancel")
    page.get_by_role("button", name="Upload DICOM", exact=True).click()
    page.set_input_files("#nn-upload-files", [str(floats)])
    option = page.locator("#nn-upload-study option", has_text="P-2024-001234")
    expect(option).to_have_count(1)
    page.select_option("#nn-upload-study", value=study["ID"])
    page.click("#nn-upload-start")
    expect(page.locator("#nn-upload-success")).to_be_visible(timeout=60000)
    expect(page.locator("#nn-upload-file-list .nn-file-status")).to_have_text("1 series of 1 instance stored")
    series = pacs.get(f"/studies/{study['ID']}").json()["Series"]
    assert len(series) == 2
    modalities = sorted(pacs.get(f"/series/{s}").json()["MainDicomTags"]["Modality"] for s in series)
    assert modalities == ["MR", "OT"]
