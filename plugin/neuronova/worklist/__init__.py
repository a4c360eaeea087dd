"""Closing the loop on identity (the way in): the worklist of studies reconciliation could not settle,
moving a study to a patient, and re-verifying what the EMR could not answer."""
