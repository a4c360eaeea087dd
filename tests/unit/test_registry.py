import json

import pytest

from neuronova.directory import EmbeddedRegistry, Patient, patient_from_json
from neuronova.config import BUNDLED_SEED
from neuronova.errors import BadRequest, ConfigError


@pytest.fixture
def registry(tmp_path):
    return EmbeddedRegistry(str(tmp_path / "registry.sqlite"), BUNDLED_SEED)


def test_bundled_seed_holds_the_predecessors_demo_patients(registry):
    assert registry.get("P-2024-001234") == Patient("P-2024-001234", "Hong^Gildong", "1980-01-15", "male")
    assert registry.get("P-2024-001235") == Patient("P-2024-001235", "Kim^Cheolsu", "1975-05-20", "male")


def test_bundled_seed_exercises_female_other_unknown_missing_birth_date_and_hangul(registry):
    patients, total = registry.search("", 100)
    assert total == len(patients) >= 6
    assert {"female", "other", "unknown"} <= {p.gender for p in patients}
    assert any(p.birth_date is None for p in patients)
    assert any(not p.name.isascii() for p in patients)


def test_search_is_partial_and_case_insensitive_on_id_and_name(registry):
    assert [p.patient_id for p in registry.search("hong", 50)[0]] == ["P-2024-001234"]
    assert [p.patient_id for p in registry.search("001235", 50)[0]] == ["P-2024-001235"]
    assert [p.name for p in registry.search("길순", 50)[0]] == ["홍^길순"]


def test_search_limit_cuts_the_list_but_total_counts_all(registry):
    patients, total = registry.search("P-2024", 2)
    assert len(patients) == 2 and total >= 6


def test_put_creates_then_updates_and_survives_reopening(tmp_path):
    path = str(tmp_path / "registry.sqlite")
    registry = EmbeddedRegistry(path, BUNDLED_SEED)
    assert registry.put(Patient("X-1", "Doe^Jane", None, "female")) is True
    assert registry.put(Patient("X-1", "Doe^Janet", "1990-01-02", "female")) is False
    registry.put(Patient("P-2024-001234", "Hong^Gil-dong", "1980-01-15", "male"))
    reopened = EmbeddedRegistry(path, BUNDLED_SEED)  # the seed is not applied twice
    assert reopened.get("X-1") == Patient("X-1", "Doe^Janet", "1990-01-02", "female")
    assert reopened.get("P-2024-001234").name == "Hong^Gil-dong"


def test_unreadable_seed_stops_with_the_configuration_key(tmp_path):
    seed = tmp_path / "seed.json"
    seed.write_text(json.dumps([{"patient_id": "A", "name": "no caret"}]))
    with pytest.raises(ConfigError, match="NeuroNova.Directory.SeedFile"):
        EmbeddedRegistry(str(tmp_path / "r.sqlite"), str(seed))


@pytest.mark.parametrize("payload, field", [
    ({"name": "Doe", "gender": "male"}, "name"),
    ({"name": "Doe^J", "birth_date": "1990-13-01"}, "birth_date"),
    ({"name": "Doe^J", "birth_date": "19900101"}, "birth_date"),
    ({"name": "Doe^J", "birth_date": "2999-01-01"}, "birth_date"),
    ({"name": "Doe^J", "gender": "M"}, "gender"),
    ({"name": "Doe^J", "colour": "blue"}, "colour"),
    ({"name": "Doe^J", "patient_id": "other"}, "patient_id"),
    ([1, 2], "body"),
])
def test_invalid_records_name_the_bad_field(payload, field):
    with pytest.raises(BadRequest, match=f"^{field}:"):
        patient_from_json("ID-1", payload)


def test_dicom_values_of_a_patient():
    patient = patient_from_json("ID-1", {"name": "Doe^Jane", "birth_date": "1990-02-03", "gender": "female"})
    assert (patient.dicom_birth_date, patient.dicom_sex) == ("19900203", "F")
    assert patient_from_json("ID-2", {"name": "Doe^X", "gender": "other"}).dicom_sex == "O"
    assert patient_from_json("ID-3", {"name": "Doe^X"}).dicom_birth_date == ""
