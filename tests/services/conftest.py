"""A live API on the test database (SQLite or PostgreSQL), without a Ray cluster."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from services.api.app import create_app
from services.config import Settings

TOKEN = "test-admin-token"


class Client:
    def __init__(self, client: TestClient, settings: Settings) -> None:
        self.c = client
        self.settings = settings
        self.h = {"Authorization": f"Bearer {TOKEN}"}

    def get(self, path: str, **kw: Any) -> Any:
        return self.c.get(path, headers=self.h, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.c.post(path, headers=self.h, **kw)

    def upload(self, name: str, table: pa.Table) -> str:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        r = self.post(
            "/v1/datasets",
            files={"file": (f"{name}.parquet", buf.getvalue())},
            data={"name": name},
        )
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def audits(self) -> int:
        return int(self.get("/v1/audits").json()["total"])


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[Client]:
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url,
        bootstrap_token=TOKEN,
        ray_dashboard_url="http://127.0.0.1:9",  # nothing listens there
    )
    with TestClient(create_app(settings, reconcile=False)) as c:
        yield Client(c, settings)
