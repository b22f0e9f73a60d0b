"""Datasets registered by URI: confinement to the allowed roots, reading in place, the quality
report through the API, and the launch-time check that the file is still what was registered.

Every API test runs on SQLite and PostgreSQL (the ``client`` fixture). Object storage is
exercised for real over the S3 protocol against a small S3 server in this file (pyarrow's own
S3 client, pointed at it with ``AWS_ENDPOINT_URL``); Google Cloud Storage is tested as far as
parsing and confinement only, since nothing here speaks its protocol.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.data import describe_table, read_columns
from jobs.datasets import BUILTIN, resolve_uri
from jobs.spec import JobSpec
from services.core.dataset_uris import (
    GCS_RETRY_LIMIT_S,
    Location,
    UriRejected,
    confine,
    filesystem_uri,
    parse_root,
)
from services.core.datasets import verify_unchanged
from services.store.models import Dataset
from tests.services.conftest import Client

BUCKET = "crucible-test"


@dataclass
class Tree:
    allowed: Path
    outside: Path
    artifacts: Path


def small_table(n: int = 90) -> pa.Table:
    rng = np.random.default_rng(0)
    label = np.arange(n) % 2
    return pa.table(
        {
            "x1": rng.normal(size=n) + label,
            "x2": rng.normal(size=n),
            "sex": ["F" if i % 3 else "M" for i in range(n)],
            "label": label,
        }
    )


def parquet_bytes(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "sub").mkdir(parents=True)
    outside.mkdir()
    pq.write_table(small_table(), allowed / "good.parquet")
    pq.write_table(small_table(), outside / "secret.parquet")
    (allowed / "escape.parquet").symlink_to(outside / "secret.parquet")
    (allowed / "escape-dir").symlink_to(outside, target_is_directory=True)
    (allowed / "notes.txt").write_text("a,b\n1,2\n")
    # A sibling whose name starts like the root: a prefix match on text would let it in.
    (tmp_path / "allowed-not").mkdir()
    pq.write_table(small_table(), tmp_path / "allowed-not" / "x.parquet")
    os.mkfifo(allowed / "pipe.parquet")
    return Tree(allowed, outside, tmp_path / "artifacts")


@pytest.fixture
def api(client: Client, tree: Tree) -> Client:
    # The app reads its settings per request, like test_upload_size_limit relies on.
    client.settings.dataset_roots = [str(tree.allowed), f"s3://{BUCKET}/data"]
    return client


def register(api: Client, uri: str, name: str = "byuri", **extra: Any) -> Any:
    return api.post("/v1/datasets", json={"name": name, "uri": uri, **extra})


def fields(r: Any) -> set[tuple[Any, ...]]:
    return {tuple(f["loc"]) for f in r.json()["fields"]}


def stored_nothing(api: Client, tree: Tree) -> bool:
    folder = tree.artifacts / "datasets"
    no_files = not folder.exists() or not any(folder.iterdir())
    return api.get("/v1/datasets").json()["total"] == len(BUILTIN) and no_files


def stored_row(api: Client, dataset_id: str) -> Dataset:
    services = api.c.app.state.services  # type: ignore[attr-defined]
    with services.db.session() as s:
        row = s.get(Dataset, dataset_id)
        assert row is not None
        s.expunge(row)
        return row


# --- rejected URIs ----------------------------------------------------------------------------

REJECTED = [
    # traversal, plain and encoded, once and twice and three times
    ("{allowed}/../outside/secret.parquet", "'..'"),
    ("{allowed}/sub/../../outside/secret.parquet", "'..'"),
    ("{allowed}/%2e%2e/outside/secret.parquet", "'..'"),
    ("{allowed}/%2E%2E%2Foutside%2Fsecret.parquet", "'..'"),
    ("{allowed}/%252e%252e/outside/secret.parquet", "'..'"),
    ("{allowed}/%25252e%25252e%25252fsecret.parquet", "'..'"),
    ("{allowed}/..%2foutside/secret.parquet", "'..'"),
    ("{allowed}/good%2Eparquet", "percent-escapes"),  # harmless once decoded, still refused
    ("{allowed}/./good.parquet", "'.'"),
    ("{allowed}//good.parquet", "empty path segment"),
    # backslashes
    ("{allowed}\\..\\outside\\secret.parquet", "backslash"),
    ("{allowed}/%5c..%5csecret.parquet", "backslash"),
    # symlinks out of the root: the file itself, and a folder on the way
    ("{allowed}/escape.parquet", "symlink"),
    ("{allowed}/escape-dir/secret.parquet", "symlink"),
    # outside the roots as written
    ("{outside}/secret.parquet", "outside the allowed roots"),
    ("{allowed}-not/x.parquet", "outside the allowed roots"),
    ("{artifacts}/datasets/x.parquet", "outside the allowed roots"),
    ("/etc/passwd", "outside the allowed roots"),
    ("good.parquet", "absolute"),
    ("~/good.parquet", "absolute"),
    # not regular files, not there, not a table format
    ("{allowed}/pipe.parquet", "not a regular file"),
    ("{allowed}/sub", "not a regular file"),
    ("{allowed}/missing.parquet", "no file"),
    ("{allowed}/notes.txt", "neither Parquet"),
    ("{allowed}/good.parquet\x00.csv", "control characters"),
    ("{allowed}/good.parquet%00", "control characters"),
    # schemes
    ("file://{allowed}/good.parquet", "file://"),
    ("file://{outside}/secret.parquet", "file://"),
    ("FILE:///etc/passwd", "file://"),
    ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "HTTP"),
    ("https://example.com/data.parquet", "HTTP"),
    ("http%3A%2F%2F169.254.169.254%2Flatest", "percent-escapes"),
    ("ftp://example.com/data.parquet", "unknown scheme"),
    ("hdfs://namenode/data.parquet", "unknown scheme"),
    ("mock://x/data.parquet", "unknown scheme"),
    ("builtin://adult", "unknown scheme"),
    ("C:/data/good.parquet", "unknown scheme"),
    # object stores: outside the allowed prefix, options smuggled in, malformed
    (f"s3://{BUCKET}/other/x.parquet", "outside the allowed roots"),
    (f"s3://{BUCKET}/data2/x.parquet", "outside the allowed roots"),
    ("s3://another-bucket/data/x.parquet", "outside the allowed roots"),
    (f"s3://{BUCKET}/data/../secret/x.parquet", "'..'"),
    (f"s3://{BUCKET}/data/%2e%2e/secret/x.parquet", "'..'"),
    (f"s3://{BUCKET}/data/x.parquet?endpoint_override=169.254.169.254", "query"),
    (f"s3://{BUCKET}/data/x.parquet#frag", "query"),
    (f"s3://key:secret@{BUCKET}/data/x.parquet", "credentials"),
    (f"s3://{BUCKET}:9000/data/x.parquet", "credentials or a port"),
    (f"s3://{BUCKET}", "names a bucket"),
    ("s3://Bad_Bucket/data/x.parquet", "bucket name"),
    (f"s3:{BUCKET}/data/x.parquet", "s3://bucket/key"),
    (f"gs://{BUCKET}/data/x.parquet", "no gs:// bucket is open"),
]


@pytest.mark.parametrize(("template", "needle"), REJECTED)
def test_rejected_uris_are_a_422_naming_uri_and_store_nothing(
    api: Client, tree: Tree, template: str, needle: str
) -> None:
    uri = template.format(allowed=tree.allowed, outside=tree.outside, artifacts=tree.artifacts)
    r = register(api, uri)
    assert r.status_code == 422, r.text
    assert fields(r) == {("uri",)}
    assert needle in r.json()["detail"], r.json()["detail"]
    assert "secret" not in str(r.json()) or "secret" in uri  # no path from outside leaks out
    assert stored_nothing(api, tree)


def test_without_roots_no_local_path_is_accepted(client: Client, tree: Tree) -> None:
    r = register(client, str(tree.allowed / "good.parquet"))
    assert r.status_code == 422 and fields(r) == {("uri",)}
    assert "CRUCIBLE_DATASET_ROOTS" in r.json()["detail"]
    assert stored_nothing(client, tree)


def test_bad_bodies(api: Client, tree: Tree) -> None:
    good = str(tree.allowed / "good.parquet")
    r = api.post("/v1/datasets", json={"name": "x"})
    assert r.status_code == 422 and fields(r) == {("uri",)}
    r = api.post("/v1/datasets", json={"name": "../x", "uri": good})
    assert r.status_code == 422 and fields(r) == {("name",)}
    r = api.post("/v1/datasets", json={"name": "x", "uri": good, "endpoint": "http://x"})
    assert r.status_code == 422 and fields(r) == {("endpoint",)}
    as_json = {**api.h, "Content-Type": "application/json"}
    assert api.c.post("/v1/datasets", content=b"{", headers=as_json).status_code == 422
    as_text = {**api.h, "Content-Type": "text/plain"}
    r = api.c.post("/v1/datasets", content=b"name=x", headers=as_text)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = register(api, good, target="nope")
    assert r.status_code == 422 and fields(r) == {("target",)}
    assert stored_nothing(api, tree)


def test_openapi_documents_both_bodies(api: Client) -> None:
    op = api.c.app.openapi()["paths"]["/v1/datasets"]["post"]  # type: ignore[attr-defined]
    content = op["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    assert {"name", "uri"} <= set(content["application/json"]["schema"]["required"])
    assert "Content-Type" in op["description"]


# --- registering local files ------------------------------------------------------------------


def test_parquet_is_registered_in_place(api: Client, tree: Tree) -> None:
    table = small_table().append_column(
        "image", pa.array([[[float(i), 0.0], [0.0, 1.0]] for i in range(90)])
    )
    path = tree.allowed / "sub" / "images.parquet"
    pq.write_table(table, path)
    r = register(api, str(path), target="label")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["num_rows"], d["format"], d["source_uri"]) == (90, "parquet", str(path))
    assert d["sha256"] == d["source_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert d["size_bytes"] == path.stat().st_size
    assert d["columns"] == describe_table(pq.read_table(path))
    assert {"name": "image", "type": "list<element: list<element: double>>", "kind": "array",
            "shape": [2, 2]} in d["columns"]  # fmt: skip
    # Read where it is: nothing copied into artifact storage, the row points at the file.
    assert stored_row(api, d["id"]).uri == str(path.resolve())
    # The registration reads a private copy of the file, gone once it is done.
    assert not list((tree.artifacts / "datasets").iterdir())
    shown = api.get(f"/v1/datasets/{d['id']}").json()
    assert shown["quality"]["num_rows"] == 90
    assert shown["quality"]["label_balance"]["classes"] == [
        {"value": 0, "count": 45, "share": 0.5},
        {"value": 1, "count": 45, "share": 0.5},
    ]
    listed = next(x for x in api.get("/v1/datasets").json()["items"] if x["id"] == d["id"])
    assert "quality" not in listed  # kept out of lists


def test_a_symlink_inside_the_root_is_followed_and_stored_resolved(api: Client, tree: Tree) -> None:
    (tree.allowed / "sub" / "alias.parquet").symlink_to(tree.allowed / "good.parquet")
    r = register(api, str(tree.allowed / "sub" / "alias.parquet"))
    assert r.status_code == 201, r.text
    assert stored_row(api, r.json()["id"]).uri == str((tree.allowed / "good.parquet").resolve())


def test_parquet_by_magic_bytes_whatever_the_name(api: Client, tree: Tree) -> None:
    path = tree.allowed / "export.dat"
    path.write_bytes(parquet_bytes(small_table(10)))
    r = register(api, str(path))
    assert r.status_code == 201 and r.json()["format"] == "parquet"


def test_csv_is_converted_once_into_artifact_storage(api: Client, tree: Tree) -> None:
    csv = b"x1,x2,sex,label\n" + b"".join(
        f"{i / 10},{(i * 7) % 5},{'F' if i % 3 else 'M'},{i % 2}\n".encode() for i in range(60)
    )
    path = tree.allowed / "table.csv"
    path.write_bytes(csv)
    r = register(api, str(path), target="label")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["num_rows"], d["format"], d["source_uri"]) == (60, "csv", str(path))
    assert d["source_sha256"] == hashlib.sha256(csv).hexdigest()
    assert [(c["name"], c["kind"]) for c in d["columns"]] == [
        ("x1", "numeric"),
        ("x2", "numeric"),
        ("sex", "categorical"),
        ("label", "numeric"),
    ]
    stored = tree.artifacts / "datasets" / f"{d['id']}.parquet"
    assert stored_row(api, d["id"]).uri == str(stored)
    assert d["sha256"] == hashlib.sha256(stored.read_bytes()).hexdigest()
    assert pq.read_table(stored).num_rows == 60
    assert path.read_bytes() == csv  # the source is left alone


def test_a_job_validates_and_the_driver_reads_the_dataset(api: Client, tree: Tree) -> None:
    from jobs.prepare import prepare  # the driver's own data path

    d = register(api, str(tree.allowed / "good.parquet"), target="label").json()
    spec = {
        "name": "byuri",
        "dataset": {"id": d["id"], "target": "label"},
        "audit": {"sensitive_features": ["sex"]},
    }
    r = api.post("/v1/jobs", json=spec)
    assert r.status_code == 202, r.text
    bad = {**spec, "dataset": {"id": d["id"], "target": "income"}}
    assert api.post("/v1/jobs", json=bad).status_code == 422
    uri = stored_row(api, d["id"]).uri
    prepared = prepare(JobSpec.model_validate(spec), uri)
    assert sum(prepared.split_sizes.values()) == 90
    assert prepared.classes == [0, 1]


def test_a_changed_file_fails_the_job_before_launch(api: Client, tree: Tree) -> None:
    path = tree.allowed / "sub" / "moving.parquet"
    pq.write_table(small_table(), path)
    d = register(api, str(path)).json()
    spec = {"name": "j", "dataset": {"id": d["id"], "target": "label"}}
    unchanged = api.post("/v1/jobs", json=spec).json()["id"]
    reconciler = api.c.app.state.services.reconciler  # type: ignore[attr-defined]
    reconciler.tick()  # Ray is not there: the launch fails and the job waits, still queued
    assert api.get(f"/v1/jobs/{unchanged}").json()["status"] == "queued"
    api.post(f"/v1/jobs/{unchanged}/cancel")

    changed = api.post("/v1/jobs", json=spec).json()["id"]
    pq.write_table(small_table(91), path)
    reconciler.tick()
    job = api.get(f"/v1/jobs/{changed}").json()
    assert job["status"] == "failed"
    assert f"dataset {d['id']}: the dataset changed after it was registered" in job["error"]
    assert d["sha256"] in job["error"]


def test_upload_also_takes_a_target_and_reports_quality(api: Client, tree: Tree) -> None:
    r = api.post(
        "/v1/datasets",
        files={"file": ("t.parquet", parquet_bytes(small_table()))},
        data={"name": "up", "target": "label"},
    )
    assert r.status_code == 201, r.text
    q = r.json()["quality"]
    assert q["label_balance"]["column"] == "label" and q["duplicate_rows"] == 0
    r = api.post(
        "/v1/datasets",
        files={"file": ("t.parquet", parquet_bytes(small_table()))},
        data={"name": "up", "target": "nope"},
    )
    assert r.status_code == 422 and fields(r) == {("target",)}


def test_quality_report_through_the_api(api: Client, tree: Tree) -> None:
    """The hand-computed figures of tests/jobs/test_quality.py, end to end."""
    table = pa.table(
        {
            "age": [30.0, float("nan"), 40.0, 40.0, None, 40.0],
            "sex": ["F", "M", "  ", "M", "M", "M"],
            "label": [1, 0, 0, 0, 0, 0],
        }
    )
    path = tree.allowed / "q.parquet"
    pq.write_table(table, path)
    d = register(api, str(path), target="label").json()
    q = api.get(f"/v1/datasets/{d['id']}").json()["quality"]
    assert q["duplicate_rows"] == 1  # row 5 repeats row 3
    by_name = {c["name"]: c for c in q["columns"]}
    assert (by_name["age"]["missing"], by_name["sex"]["missing"]) == (2, 1)
    assert by_name["sex"]["groups"] == [{"value": "M", "count": 4}, {"value": "F", "count": 1}]
    assert [c["count"] for c in q["label_balance"]["classes"]] == [5, 1]
    assert {(w["kind"], w["column"]) for w in q["warnings"]} == {
        ("duplicates", None),
        ("small_groups", "sex"),
        ("small_groups", "label"),
    }


# --- object storage ---------------------------------------------------------------------------


def test_object_uri_confinement() -> None:
    roots = [parse_root(f"s3://{BUCKET}/data/"), parse_root("gs://gcs-bucket")]
    assert roots[0].path == f"{BUCKET}/data"
    loc = confine(f"s3://{BUCKET}/data/sub/x y+z.parquet", roots)
    assert loc == Location("s3", f"{BUCKET}/data/sub/x y+z.parquet")
    # pyarrow decodes the URI it is given: the key reaches it quoted, so it means this object.
    assert filesystem_uri(loc) == f"s3://{BUCKET}/data/sub/x%20y%2Bz.parquet"
    assert resolve_uri(loc.uri) == f"s3://{BUCKET}/data/sub/x%20y%2Bz.parquet"
    gcs = confine("gs://gcs-bucket/any/where.csv", roots)
    assert filesystem_uri(gcs) == (
        f"gs://gcs-bucket/any/where.csv?retry_limit_seconds={GCS_RETRY_LIMIT_S}"
    )
    assert confine(f"s3://{BUCKET}/data", roots).path == f"{BUCKET}/data"
    for bad in (f"s3://{BUCKET}/data2/x", f"s3://{BUCKET}/dat", "gs://gcs-bucket2/x"):
        with pytest.raises(UriRejected, match="outside the allowed roots"):
            confine(bad, roots)


@pytest.mark.parametrize(
    "root", ["relative/path", "file:///srv", "http://x/y", "s3://UPPER/x", "/srv/../etc", "/a%2e"]
)
def test_bad_roots_fail_at_start_up(root: str) -> None:
    with pytest.raises(ValueError, match="dataset root"):
        parse_root(root)


class _S3:
    """The few S3 calls pyarrow's S3 filesystem makes to read one object: HEAD and ranged GET
    on path-style URLs. Objects live in ``objects``; ``requests`` records what was asked."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        store = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, code: int, body: bytes = b"", **headers: str) -> None:
                self.send_response(code)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k.replace("_", "-"), v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _object(self) -> bytes | None:
                store.requests.append((self.command, self.path))
                return store.objects.get(self.path.split("?")[0].lstrip("/"))

            def do_HEAD(self) -> None:
                data = self._object()
                if data is None:
                    self._send(404)
                else:
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.send_header("Last-Modified", "Mon, 01 Jan 2024 00:00:00 GMT")
                    self.end_headers()

            def do_GET(self) -> None:
                data = self._object()
                if data is None:
                    self._send(404, b"<Error><Code>NoSuchKey</Code></Error>")
                    return
                spec = self.headers.get("Range")
                if not spec:
                    self._send(200, data)
                    return
                start, end = (int(x) for x in spec.removeprefix("bytes=").split("-"))
                end = min(end, len(data) - 1)
                self._send(
                    206, data[start : end + 1], Content_Range=f"bytes {start}-{end}/{len(data)}"
                )

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[_S3]:
    server = _S3()
    thread = threading.Thread(target=server.server.serve_forever, daemon=True)
    thread.start()
    # The server's environment is where object-store endpoints and credentials come from
    # (never from the caller's URI); here it points pyarrow's S3 client at the local server.
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    yield server
    server.server.shutdown()
    server.server.server_close()


def test_an_allowed_s3_object_is_read_through_pyarrow_fs(api: Client, tree: Tree, s3: _S3) -> None:
    data = parquet_bytes(small_table())
    s3.objects[f"{BUCKET}/data/t.parquet"] = data
    r = register(api, f"s3://{BUCKET}/data/t.parquet", target="label")
    assert r.status_code == 201, r.text
    d = r.json()
    assert (d["num_rows"], d["format"]) == (90, "parquet")
    assert d["sha256"] == hashlib.sha256(data).hexdigest()
    assert ("GET", f"/{BUCKET}/data/t.parquet") in s3.requests  # it went over the wire
    assert not list((tree.artifacts / "datasets").iterdir())  # read in place, not copied
    uri = stored_row(api, d["id"]).uri
    assert uri == f"s3://{BUCKET}/data/t.parquet"
    # The driver's path: pyarrow opens the stored URI itself.
    columns, kinds = read_columns(uri, ["x1", "sex"])
    assert len(columns["x1"]) == 90 and kinds == {"x1": "numeric", "sex": "categorical"}
    assert pq.read_schema(resolve_uri(uri)).names == ["x1", "x2", "sex", "label"]
    # The launch-time check over the same protocol.
    assert verify_unchanged(uri, d["sha256"]) is None
    s3.objects[f"{BUCKET}/data/t.parquet"] = parquet_bytes(small_table(91))
    assert "changed after it was registered" in (verify_unchanged(uri, d["sha256"]) or "")


def test_s3_csv_and_missing_objects(api: Client, tree: Tree, s3: _S3) -> None:
    s3.objects[f"{BUCKET}/data/t.csv"] = b"a,b\n1,x\n2,y\n"
    r = register(api, f"s3://{BUCKET}/data/t.csv")
    assert r.status_code == 201, r.text
    assert (r.json()["format"], r.json()["num_rows"]) == ("csv", 2)
    assert stored_row(api, r.json()["id"]).uri.startswith(str(tree.artifacts / "datasets"))
    r = register(api, f"s3://{BUCKET}/data/absent.parquet")
    assert r.status_code == 422 and fields(r) == {("uri",)}


def test_an_image_folder_is_decoded_once_and_unreadable_files_are_named(
    api: Client, tree: Tree
) -> None:
    from PIL import Image

    folder = tree.allowed / "pictures"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "bad.png").write_bytes(b"not an image")
    (folder / "labels.csv").write_text(
        "file,digit\n0.png,0\n1.png,1\n2.png,0\n3.png,1\nbad.png,1\n"
    )
    r = register(api, f"{folder}/", name="pictures", target="digit")
    assert r.status_code == 201, r.text
    d = api.get(f"/v1/datasets/{r.json()['id']}").json()
    assert (d["format"], d["num_rows"]) == ("image_folder", 4)
    image = next(c for c in d["columns"] if c["name"] == "image")
    assert (image["kind"], image["shape"]) == ("array", [8, 8])
    assert [s["file"] for s in d["quality"]["skipped_files"]] == ["bad.png"]
    assert "bad.png" in d["quality"]["warnings"][0]["message"]
    # a folder without labels.csv, or outside the roots, is refused naming uri
    (tree.allowed / "empty").mkdir()
    for uri in (f"{tree.allowed}/empty/", f"{tree.outside}/"):
        bad = register(api, uri, name="nope")
        assert bad.status_code == 422 and fields(bad) == {("uri",)}, bad.text
