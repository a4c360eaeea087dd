"""The script Orthanc's Python plugin loads: glue only. All logic lives in the `neuronova` package."""

import orthanc

from neuronova import orthanc_adapter

orthanc_adapter.start(orthanc)
