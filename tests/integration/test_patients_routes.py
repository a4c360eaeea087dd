"""The EMR directory routes, served by the plugin inside a real Orthanc."""


def test_search_answers_in_the_predecessors_shape(pacs):
    answer = pacs.get("/neuronova/patients", params={"search": "Hong", "limit": 50})
    assert answer.status_code == 200
    assert answer.json() == {"success": True, "total": 1, "patients": [
        {"patient_id": "P-2024-001234", "name": "Hong^Gildong", "birth_date": "1980-01-15", "gender": "male",
         "other_ids": []}]}


def test_search_is_partial_case_insensitive_and_limited(pacs):
    everyone = pacs.get("/neuronova/patients").json()
    assert everyone["total"] >= 6 and len(everyone["patients"]) == everyone["total"]
    assert [p["patient_id"] for p in pacs.get("/neuronova/patients?search=kim").json()["patients"]] == ["P-2024-001235"]
    assert pacs.get("/neuronova/patients?search=%EA%B8%B8%EC%88%9C").json()["patients"][0]["name"] == "홍^길순"
    limited = pacs.get("/neuronova/patients?search=P-2024&limit=2").json()
    assert len(limited["patients"]) == 2 and limited["total"] == everyone["total"]


def test_bad_limit_is_a_400_naming_limit(pacs):
    for limit in ("abc", "0", "-3", "100000"):
        answer = pacs.get("/neuronova/patients", params={"limit": limit})
        assert answer.status_code == 400
        assert answer.json()["success"] is False and answer.json()["error"].startswith("limit:")


def test_one_patient_and_unknown_patient(pacs):
    answer = pacs.get("/neuronova/patients/P-2024-001235")
    assert answer.status_code == 200
    assert answer.json()["patient"] == {"patient_id": "P-2024-001235", "name": "Kim^Cheolsu",
                                        "birth_date": "1975-05-20", "gender": "male", "other_ids": []}
    missing = pacs.get("/neuronova/patients/NOBODY-1")
    assert missing.status_code == 404 and missing.json()["success"] is False


def test_put_creates_updates_and_validates(pacs):
    created = pacs.put("/neuronova/patients/T-PUT-1", json={"name": "Doe^Jane", "birth_date": "1990-02-03",
                                                            "gender": "female"})
    assert created.status_code == 201 and created.json()["created"] is True
    updated = pacs.put("/neuronova/patients/T-PUT-1", json={"name": "Doe^Janet", "birth_date": "1990-02-03",
                                                            "gender": "female"})
    assert updated.status_code == 200 and updated.json()["created"] is False
    assert pacs.get("/neuronova/patients/T-PUT-1").json()["patient"]["name"] == "Doe^Janet"
    assert pacs.get("/neuronova/patients?search=janet").json()["total"] == 1

    bad = pacs.put("/neuronova/patients/T-PUT-1", json={"name": "Doe^Jane", "birth_date": "03/02/1990"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("birth_date:")
    bad = pacs.put("/neuronova/patients/T-PUT-1", json={"name": "Doe^Jane", "gender": "f"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("gender:")
    bad = pacs.put("/neuronova/patients/T-PUT-1", data=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"].startswith("body:")
    bad = pacs.put("/neuronova/patients/T-PUT-1", data=b'{"name": "Doe^Jane"}')  # curl -d: a form type
    assert bad.status_code == 415 and "application/json" in bad.json()["error"]


def test_wrong_method_is_a_405_with_allow(pacs):
    answer = pacs.delete("/neuronova/patients/P-2024-001234")
    assert answer.status_code == 405
    assert "PUT" in answer.headers["Allow"]
