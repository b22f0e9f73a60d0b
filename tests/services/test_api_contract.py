"""What Schemathesis found (tests/services/test_schemathesis.py), each as a plain test: the
API's answers match what its OpenAPI document declares, and odd input is a 4xx, not a 500."""

from __future__ import annotations

import io
from typing import Any

import jsonschema
import pytest
from PIL import Image
from pydantic import BaseModel, ValidationError

from services.api.deps import MAX_ID, MAX_OFFSET
from services.api.openapi import ERROR_SCHEMA
from services.api.routers.jobs import PromoteRequest, _parse_event_id
from services.core.monitoring import FeedbackItem
from services.core.scoring import ScoringRequest
from tests.services.conftest import Client

LISTS = ["/v1/datasets", "/v1/jobs", "/v1/audits", "/v1/models", "/v1/scoring"]


def field_locs(r: Any) -> list[list[Any]]:
    return [f["loc"] for f in r.json()["fields"]]


def test_405_allows_every_method_of_the_path(client: Client) -> None:
    # GET and POST /v1/users are two routes; Starlette's Allow named only the first.
    r = client.c.request("OPTIONS", "/v1/users", headers=client.h)
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    r = client.c.request("TRACE", "/healthz")
    assert r.status_code == 405 and r.headers["allow"] == "GET"
    assert r.json()["error"] == "method_not_allowed"


@pytest.mark.parametrize("path", LISTS)
def test_an_offset_past_64_bits_is_a_422(client: Client, path: str) -> None:
    # It reached the database, whose driver overflowed: a 500 on SQLite and PostgreSQL.
    r = client.get(path, params={"offset": MAX_OFFSET + 1})
    assert r.status_code == 422, r.text
    assert field_locs(r) == [["query", "offset"]]
    r = client.get(path, params={"offset": MAX_OFFSET})
    assert r.status_code == 200, r.text
    assert r.json()["items"] == []


def test_audit_log_bounds(client: Client) -> None:
    # An id column is a 32-bit INTEGER on PostgreSQL.
    r = client.get("/v1/audit-log", params={"before": MAX_ID + 1})
    assert r.status_code == 422 and field_locs(r) == [["query", "before"]]
    assert client.get("/v1/audit-log", params={"before": MAX_ID}).status_code == 200
    # A number was read as seconds since 1970, in UTC: a zone nobody gave.
    r = client.get("/v1/audit-log", params={"since": "0.5"})
    assert r.status_code == 422 and field_locs(r) == [["query", "since"]]
    r = client.get("/v1/audit-log", params={"since": "2026-01-31T00:00:00Z"})
    assert r.status_code == 200, r.text


def test_a_last_event_id_past_any_id_means_after_everything() -> None:
    assert _parse_event_id(str(2**64)) == MAX_ID
    assert _parse_event_id("-3") == 0


def test_a_binary_upload_is_a_422_naming_the_file(client: Client) -> None:
    # Not Parquet, so read as CSV; Arrow took the bytes as a header row, whose names then
    # failed to decode as UTF-8: a 500.
    png = io.BytesIO()
    Image.new("L", (1, 1)).save(png, "PNG")
    r = client.post("/v1/datasets", files={"file": ("x.png", png.getvalue())}, data={"name": "png"})
    assert r.status_code == 422, r.text
    assert field_locs(r) == [["file"]]
    assert "UTF-8" in r.json()["detail"]


def test_errors_are_declared_in_their_own_shape(client: Client) -> None:
    document = client.c.app.openapi()  # type: ignore[attr-defined]
    assert document["components"]["schemas"]["Error"] == ERROR_SCHEMA
    assert "HTTPValidationError" not in document["components"]["schemas"]
    for path, operations in document["paths"].items():
        for method, op in operations.items():
            statuses = set(op["responses"])
            if path.startswith("/v1/"):
                assert {"401", "403", "404", "429", "503"} <= statuses, (method, path)
            for status, response in op["responses"].items():
                if status[0] in "45":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path)
    # Declared by the route itself.
    assert "415" in document["paths"]["/v1/datasets"]["post"]["responses"]
    assert "409" in document["paths"]["/v1/jobs/{job_id}/cancel"]["post"]["responses"]
    # And an answer fits it.
    r = client.get("/v1/jobs", params={"limit": 0})
    assert r.status_code == 422
    jsonschema.validate(r.json(), ERROR_SCHEMA)


def test_extra_upload_fields_are_refused(client: Client) -> None:
    # Past 10 fields Starlette's parser answered 400; below, extras were dropped unread.
    r = client.post(
        "/v1/datasets",
        files={"file": ("d.csv", b"x,y\n1,2\n")},
        data={"name": "d", "colour": "red"},
    )
    assert r.status_code == 422, r.text
    assert field_locs(r) == [["colour"]]


def test_a_boolean_is_not_a_number_nor_a_string_a_boolean(client: Client) -> None:
    # Lax, `"expires_in_days": true` made a token for 1 day.
    r = client.post("/v1/tokens", json={"name": "t", "expires_in_days": True})
    assert r.status_code == 422 and field_locs(r) == [["expires_in_days"]]
    user_id = client.get("/v1/me").json()["id"]
    r = client.c.patch(f"/v1/users/{user_id}", json={"disabled": "yes"}, headers=client.h)
    assert r.status_code == 422 and field_locs(r) == [["disabled"]]
    cases: list[tuple[type[BaseModel], dict[str, Any]]] = [
        (ScoringRequest, {"dataset_id": "d", "concurrency": True}),
        (FeedbackItem, {"request_id": "r", "index": True, "label": 1}),
        (PromoteRequest, {"endpoint": "e", "traffic": {"new": True}}),
        (PromoteRequest, {"endpoint": "e", "override": "yes", "reason": "r"}),
    ]
    for model, body in cases:
        with pytest.raises(ValidationError):
            model.model_validate(body)
    assert (
        PromoteRequest.model_validate({"endpoint": "e", "traffic": {"new": 10}}).traffic.new == 10
    )
