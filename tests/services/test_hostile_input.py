"""Hostile files and bodies against the API: each is refused with a 4xx naming what is wrong,
nothing is stored, and the API process is the one that answered before.

The files are the ones a security probe used: a Parquet file whose one cell holds 34 million
values (it segfaulted the API), images whose headers claim more pixels than a cell may hold,
and bodies sent without a token (read whole before the token was checked).
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
import struct
import time
import zlib
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from starlette.types import ASGIApp, Scope

from jobs.datasets import BUILTIN
from services.core.auth import job_token
from tests.services.conftest import TOKEN, Client

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

BOMB_VALUES = 34_000_000


@functools.cache
def bomb_parquet() -> bytes:
    """One row, one cell of 34 million zero bytes: 5 KB compressed."""
    values = pa.array(np.zeros(BOMB_VALUES, np.uint8))
    cell = pa.ListArray.from_arrays(pa.array([0, BOMB_VALUES], pa.int32()), values)
    buf = io.BytesIO()
    pq.write_table(pa.table({"x": cell}), buf, compression="zstd", use_dictionary=False)
    return buf.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header claiming ``width`` x ``height`` grey pixels, with one byte of data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0"))
        + chunk(b"IEND", b"")
    )


def upload(api: Client, data: bytes, filename: str = "x.parquet", **form: str) -> Any:
    return api.post(
        "/v1/datasets", files={"file": (filename, data)}, data={"name": "hostile", **form}
    )


def locs(r: Any) -> list[list[Any]]:
    return [f["loc"] for f in r.json()["fields"]]


def stored_nothing(api: Client) -> bool:
    folder = api.settings.resolved_artifact_root / "datasets"
    files = list(folder.iterdir()) if folder.exists() else []
    return api.get("/v1/datasets").json()["total"] == len(BUILTIN) and not files


def last_audit(api: Client) -> tuple[str, int]:
    row = api.get("/v1/audit-log", params={"limit": 1}).json()["items"][0]
    return row["path"], row["status"]


def test_a_cell_of_34_million_values_is_a_422_naming_its_column_and_row(client: Client) -> None:
    started = time.monotonic()
    r = upload(client, bomb_parquet())
    assert r.status_code == 422, r.text
    assert locs(r) == [["file", "x", 0]]
    assert "34000000 values in one cell" in r.json()["detail"]
    assert time.monotonic() - started < 30  # refused from the batch, not after a full read
    assert stored_nothing(client)
    assert last_audit(client) == ("/v1/datasets", 422)


def test_a_reader_that_crashes_is_a_422_and_the_api_goes_on(client: Client) -> None:
    # With the cell limit lifted, the bomb reaches the code that segfaulted the API
    # (pyarrow.compute on the quality report's row keys); the child dies instead.
    client.settings.max_cell_values = 10**9
    r = upload(client, bomb_parquet())
    assert r.status_code == 422, r.text
    assert locs(r) == [["file"]]
    # SIGSEGV with pyarrow 26; whatever signal a later one dies of, it is the child's.
    assert "the file crashed its reader (SIG" in r.json()["detail"], r.text
    assert stored_nothing(client)
    assert last_audit(client) == ("/v1/datasets", 422)
    client.settings.max_cell_values = 4 * 1024 * 1024
    ok = upload(client, b"a,b\n1,2\n3,4\n", "ok.csv")
    assert ok.status_code == 201, ok.text


def test_a_file_needing_more_memory_than_the_cap_is_a_422(client: Client) -> None:
    client.settings.max_cell_values = 10**9
    client.settings.intake_memory_bytes = 1024 * 1024 * 1024
    r = upload(client, bomb_parquet())
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    # A MemoryError in Python, or an allocation failing in C++ (an abort): both are the cap.
    assert "needs more than the 1073741824 bytes" in detail or "crashed its reader" in detail
    assert stored_nothing(client)


def test_a_reader_past_its_time_is_a_422(client: Client) -> None:
    client.settings.intake_timeout_s = 0.01
    rows = "".join(f"{i},{i * 0.5},text{i % 7}\n" for i in range(200_000))  # ~0.3 s to read
    r = upload(client, f"a,b,c\n{rows}".encode(), "slow.csv")
    assert r.status_code == 422, r.text
    assert "took longer than 0.01 s" in r.json()["detail"]
    assert stored_nothing(client)


def test_too_many_columns_and_too_long_a_cell_are_422s(client: Client) -> None:
    client.settings.max_columns = 5
    wide = ",".join(f"c{i}" for i in range(6)) + "\n" + ",".join("1" * 6) + "\n"
    r = upload(client, wide.encode(), "wide.csv")
    assert r.status_code == 422 and locs(r) == [["file"]], r.text
    assert "6 columns; at most 5" in r.json()["detail"]

    client.settings.max_cell_bytes = 100
    long_cell = "a,b\n1,short\n2," + "x" * 101 + "\n"
    r = upload(client, long_cell.encode(), "long.csv")
    assert r.status_code == 422 and locs(r) == [["file", "b", 1]], r.text
    table = pa.table({"t": ["ok", "y" * 200]})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    r = upload(client, buf.getvalue())
    assert r.status_code == 422 and locs(r) == [["file", "t", 1]], r.text
    # Dictionary-encoded (how Arrow keeps a categorical): still the row, not the entry.
    coded = pa.table({"t": pa.array(["ok", "ok", "y" * 200]).dictionary_encode()})
    buf = io.BytesIO()
    pq.write_table(coded, buf)
    r = upload(client, buf.getvalue())
    assert r.status_code == 422 and locs(r) == [["file", "t", 2]], r.text
    assert stored_nothing(client)


def _image_folder(root: Path, files: dict[str, bytes], listed: list[str]) -> Path:
    folder = root / "images"
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / "labels.csv").write_text("file,label\n" + "".join(f"{n},1\n" for n in listed))
    return folder


def test_images_larger_than_a_cell_are_refused_from_their_header(
    client: Client, tmp_path: Path
) -> None:
    client.settings.dataset_roots = [str(tmp_path)]
    big = io.BytesIO()
    Image.new("RGB", (1500, 1000)).save(big, "PNG")  # 4.5 M values > 4 Mi
    small = io.BytesIO()
    Image.new("RGB", (8, 8)).save(small, "PNG")
    files = {
        "a.png": small.getvalue(),
        "claims.png": png_claiming(20000, 20000),  # 69 bytes: Pillow's DecompressionBombError
        "big.png": big.getvalue(),
    }
    folder = _image_folder(tmp_path, files, ["a.png", "claims.png", "big.png", "big.png"])
    r = client.post("/v1/datasets", json={"name": "imgs", "uri": f"{folder}/"})
    assert r.status_code == 422, r.text
    assert locs(r) == [["uri", "claims.png"]]
    assert "400000000 pixels" in r.json()["detail"]
    (folder / "labels.csv").write_text("file,label\na.png,1\nbig.png,0\nbig.png,0\n")
    r = client.post("/v1/datasets", json={"name": "imgs", "uri": f"{folder}/"})
    assert r.status_code == 422 and locs(r) == [["uri", "big.png"]], r.text
    assert "1500x1000 pixels (4500000 values)" in r.json()["detail"]
    assert stored_nothing(client)


def test_a_project_without_room_is_refused_before_its_file_is_read(client: Client) -> None:
    r = client.post("/v1/projects", json={"name": "full", "max_storage_bytes": 1})
    assert r.status_code == 201, r.text
    ok = upload(client, b"a,b\n1,2\n", "tiny.csv", project="full")
    assert ok.status_code == 429, ok.text  # even the tiny file's copy is more than 1 byte
    assert ok.json()["quota"]["name"] == "max_storage_bytes"
    # No room left at all, so the hostile file is never handed to a reader: a 429, not a 422.
    assert client.post("/v1/projects", json={"name": "none", "max_storage_bytes": 0}).is_success
    r = upload(client, bomb_parquet(), project="none")
    assert r.status_code == 429, r.text
    assert stored_nothing(client)


def test_temporary_files_a_killed_api_left_are_swept_at_start(
    client: Client, database_url: str, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from services.api.app import create_app

    folder = client.settings.resolved_artifact_root / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    stale, fresh = folder / ".upload-stale", folder / ".upload-fresh"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    with TestClient(create_app(client.settings, reconcile=False)):
        pass
    assert not stale.exists()
    assert fresh.exists()  # may be another API process's upload in flight


# --- bodies are read only once their sender is known ---------------------------------------


class Sent:
    """An ASGI request, counting the messages of its body the app pulled."""

    def __init__(self) -> None:
        self.pulled = 0
        self.status: int | None = None

    async def receive(self) -> dict[str, Any]:
        self.pulled += 1
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]


def call(client: Client, path: str, headers: dict[str, str], length: int) -> Sent:
    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-type", b"application/json"), (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("testserver", 80),
        "state": {},
    }
    sent = Sent()
    app: ASGIApp = client.c.app

    async def run() -> None:
        await app(scope, sent.receive, sent.send)

    asyncio.run(run())
    return sent


@pytest.mark.parametrize(
    "path",
    [
        "/v1/internal/jobs/job_x/events",
        "/v1/internal/scoring/run_x/report",
        "/v1/internal/endpoints/adult/predictions",
        "/v1/jobs",
        "/v1/datasets",
    ],
)
def test_a_body_without_a_valid_token_is_never_read(client: Client, path: str) -> None:
    for headers in ({}, {"Authorization": "Bearer cru_not_a_token"}):
        # Within every size limit, so only authentication stands in the way.
        sent = call(client, path, headers, 1024)
        assert (sent.status, sent.pulled) == (401, 0), (path, headers)


def test_cluster_bodies_have_a_limit_too(client: Client) -> None:
    token = job_token(client.settings.resolved_secret_key, "job_x")
    too_big = client.settings.max_internal_body_bytes + 1
    sent = call(
        client, "/v1/internal/jobs/job_x/events", {"Authorization": f"Bearer {token}"}, too_big
    )
    assert (sent.status, sent.pulled) == (413, 0)
    # A user's token on a route with a body: checked first, then the body limit.
    sent = call(client, "/v1/jobs", {"Authorization": f"Bearer {TOKEN}"}, 11 * 1024 * 1024)
    assert (sent.status, sent.pulled) == (413, 0)


# --- text that would hide or reorder what others read ---------------------------------------


@pytest.mark.parametrize("bad", ["ci\x00", "a\u202egnp.exe", "zero\u200bwidth", "bell\x07"])
def test_control_and_formatting_characters_are_refused_in_names(client: Client, bad: str) -> None:
    r = client.post("/v1/tokens", json={"name": bad})
    assert r.status_code == 422 and locs(r) == [["name"]], r.text
    assert "control and formatting characters are not allowed" in r.text
    tokens = client.get("/v1/tokens").json()["items"]
    assert all(t["name"] != bad for t in tokens)
    spec = {
        "name": "j",
        "dataset": {"id": "ds_builtin_adult", "target": "income"},
        "audit": {"sensitive_features": ["sex"], "intended_use": f"Loans.\n{bad}"},
    }
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code == 422 and ["audit", "intended_use"] in locs(r), r.text
    assert client.get("/v1/jobs").json()["total"] == 0


def test_lines_and_tabs_stay_allowed_in_prose(client: Client) -> None:
    assert client.post("/v1/tokens", json={"name": "Zoë's laptop"}).status_code == 201
    spec = {
        "name": "j",
        "dataset": {"id": "ds_builtin_adult", "target": "income"},
        "audit": {"sensitive_features": ["sex"], "intended_use": "Loans.\n\tNot hiring."},
    }
    r = client.post("/v1/jobs", json=spec)
    assert r.status_code != 422, r.text
