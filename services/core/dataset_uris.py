"""Dataset URIs a caller may register, confined to the roots an operator allows.

A URI names a local file by its absolute path, or an object as ``s3://bucket/key`` or
``gs://bucket/key``. ``CRUCIBLE_DATASET_ROOTS`` lists what may be read: local folders and
bucket prefixes (``["/srv/data", "s3://team-data/tables"]``). The default is none, so the API
reads nothing but its own artifact store until an operator opens a root; the artifact store
itself is never a root (it holds every other upload and model bundle).

The rules, each a 422 naming ``uri`` and stating why:

- The text is percent-decoded until it stops changing (at most :data:`MAX_DECODE_ROUNDS`
  rounds), and the raw and the decoded text are both checked: no control characters, no
  backslash, no ``.``/``..``/empty path segment. A URI that decodes to something else is then
  refused as a whole: percent-escapes in a path are ambiguous (is ``a%20b`` a file with a
  space, or with ``%20`` in its name?) and every reader decodes a different number of times, so
  the only safe reading is none. This is what stops ``%2e%2e``, ``%252e%252e`` and friends.
- Schemes: a plain absolute path, ``s3://`` and ``gs://``; ``file://`` (give the path),
  ``http(s)://`` (the API never fetches from the network on a caller's behalf: cloud metadata
  services such as ``169.254.169.254`` live there) and every other scheme are refused.
- A local path must lie under a local root as written, and again once every symlink in it is
  resolved; the file must exist and be a regular file (not a FIFO or device, which could block
  or never end). The resolved path is what gets opened and stored, and the file opened is
  checked to be the very inode that passed (a component swapped in between is caught).
- An object URI has a valid bucket name, a key, no query or fragment (pyarrow reads filesystem
  options such as ``endpoint_override`` from the query, which would let a caller aim the server
  at any host), no user or port, and lies under an allowed prefix of the same scheme, matched
  on whole path segments (``s3://b/data`` allows ``s3://b/data/x``, not ``s3://b/data2/x``).
  It is opened through ``pyarrow.fs.FileSystem.from_uri`` with a URI this module writes; the
  credentials and endpoint come from the server's environment (``AWS_*``, Google's default
  credentials), never from the caller.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import quote, unquote

import pyarrow as pa
import pyarrow.fs as pafs

Scheme = Literal["file", "s3", "gs"]
OBJECT_SCHEMES: tuple[Scheme, ...] = ("s3", "gs")
MAX_URI_CHARS = 4096
# Double encoding is the common trick (%252e); four rounds covers any honest URI and more.
MAX_DECODE_ROUNDS = 4
# A registration request must not hang on Google's default retry policy (15 minutes).
GCS_RETRY_LIMIT_S = 15

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_BUCKET: dict[str, re.Pattern[str]] = {
    "s3": re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$"),
    "gs": re.compile(r"^[a-z0-9][a-z0-9._\-]{1,220}[a-z0-9]$"),
}


class UriRejected(ValueError):
    """The URI may not be read; the message says why, for the caller."""


@dataclass(frozen=True)
class Root:
    """One allowed root: a local folder (absolute, normalised) or ``bucket[/prefix]``."""

    scheme: Scheme
    path: str

    def __str__(self) -> str:
        return self.path if self.scheme == "file" else f"{self.scheme}://{self.path}"


@dataclass(frozen=True)
class Location:
    """A confined dataset location: a resolved local path, or ``bucket/key``.

    ``identity`` is the (device, inode) of a local file when it was checked, so opening it can
    prove it is the same file.
    """

    scheme: Scheme
    path: str
    identity: tuple[int, int] | None = None

    @property
    def uri(self) -> str:
        """How the dataset row stores it; what jobs.datasets.resolve_uri reads."""
        return self.path if self.scheme == "file" else f"{self.scheme}://{self.path}"


def _segments_problem(path: str) -> str | None:
    for seg in path.split("/"):
        if seg == "..":
            return "a '..' segment (leaving a folder)"
        if seg == ".":
            return "a '.' segment"
        if seg == "":
            return "an empty path segment ('//' or a trailing '/')"
    return None


def _text_problem(text: str) -> str | None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return "control characters"
    if "\\" in text:
        return "a backslash"
    return None


def fully_decoded(text: str) -> str:
    current = text
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(current)
        if decoded == current:
            return current
        current = decoded
    raise UriRejected(f"the URI is percent-encoded more than {MAX_DECODE_ROUNDS} times")


def _decoded(raw: str) -> str:
    """The fully decoded text, once neither it nor ``raw`` has a character that is never part
    of a path (control characters, backslashes)."""
    if not raw:
        raise UriRejected("the URI is empty")
    if len(raw) > MAX_URI_CHARS:
        raise UriRejected(f"the URI is longer than {MAX_URI_CHARS} characters")
    decoded = fully_decoded(raw)
    for text in dict.fromkeys((raw, decoded)):
        problem = _text_problem(text)
        if problem:
            raise UriRejected(f"the URI has {problem}{_decoded_note(raw, text)}")
    return decoded


def _decoded_note(raw: str, text: str) -> str:
    return "" if text == raw else f" once percent-decoded (it reads {text!r})"


def _check_path(raw: str, decoded: str) -> None:
    """No '.', '..' or empty segment in the path or key, as written or decoded; then no
    percent-escapes at all."""
    for text in dict.fromkeys((raw, decoded)):
        body = _SCHEME.sub("", text, count=1)
        body = (body[2:] if body.startswith("//") else body).lstrip("/")
        problem = _segments_problem(body) if body else None
        if problem:
            raise UriRejected(f"the URI has {problem}{_decoded_note(raw, text)}")
    if decoded != raw:
        raise UriRejected(
            f"the URI contains percent-escapes (it decodes to {decoded!r}); write the path or "
            "key exactly as it is stored, without %-encoding"
        )


def parse_root(text: str) -> Root:
    """An operator's root; ValueError when it is not an absolute path or bucket prefix."""
    text = text.strip().rstrip("/") or "/"
    try:
        _check_path(text, _decoded(text))
    except UriRejected as exc:
        raise ValueError(f"dataset root {text!r}: {exc}") from None
    m = _SCHEME.match(text)
    if m is None:
        if not text.startswith("/"):
            raise ValueError(f"dataset root {text!r} must be an absolute path")
        return Root("file", text)
    scheme = _object_scheme(m.group(1))
    if scheme is None:
        raise ValueError(
            f"dataset root {text!r}: only absolute paths, s3:// and gs:// roots are possible"
        )
    bucket, _, prefix = text[m.end() :].removeprefix("//").partition("/")
    if not _BUCKET[scheme].match(bucket) or "?" in prefix or "#" in prefix:
        raise ValueError(f"dataset root {text!r} must be {scheme}://bucket[/prefix]")
    return Root(scheme, f"{bucket}/{prefix}" if prefix else bucket)


def _object_scheme(name: str) -> Scheme | None:
    name = name.lower()
    return cast(Scheme, name) if name in OBJECT_SCHEMES else None


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def confine(raw: str, roots: list[Root]) -> Location:
    """Where ``raw`` points, if it is allowed; raises :class:`UriRejected` otherwise.

    Local paths are resolved on disk (the file must exist); object URIs are checked as text
    only, and opened by :func:`open_location`.
    """
    decoded = _decoded(raw)
    m = _SCHEME.match(raw)
    if m is None:
        _check_path(raw, decoded)
        if not raw.startswith("/"):
            raise UriRejected("a local path must be absolute")
        return _confine_local(raw, [r for r in roots if r.scheme == "file"])
    # The scheme alone decides these, whatever the path looks like.
    name = m.group(1).lower()
    if name == "file":
        raise UriRejected("file:// URIs are not accepted; give the absolute path instead")
    if name in ("http", "https"):
        raise UriRejected(
            "the API does not fetch datasets over HTTP(S); put the file under an allowed "
            "folder or bucket, or upload it"
        )
    scheme = _object_scheme(name)
    if scheme is None:
        raise UriRejected(
            f"unknown scheme '{name}:'; give an absolute path, s3://bucket/key or gs://bucket/key"
        )
    _check_path(raw, decoded)
    return _confine_object(scheme, raw[m.end() :], [r for r in roots if r.scheme == scheme])


def _confine_local(raw: str, roots: list[Root]) -> Location:
    if not roots:
        raise UriRejected(
            "no local folder is open for datasets; an operator allows one with "
            "CRUCIBLE_DATASET_ROOTS"
        )
    # Checked as written first, so a path outside every root is refused without touching the
    # disk (no probing which files exist elsewhere).
    if not any(_under(raw, r.path) for r in roots):
        raise UriRejected(f"'{raw}' is outside the allowed roots ({_listed(roots)})")
    try:
        real = Path(raw).resolve(strict=True)
    except FileNotFoundError:
        raise UriRejected(f"no file at '{raw}'") from None
    except (OSError, RuntimeError) as exc:  # symlink loops, permissions
        raise UriRejected(f"'{raw}' cannot be resolved: {exc}") from None
    if not any(real.is_relative_to(Path(r.path).resolve()) for r in roots):
        raise UriRejected(
            f"'{raw}' resolves (through a symlink) to a file outside the allowed roots"
        )
    st = real.stat()
    if not stat.S_ISREG(st.st_mode):
        raise UriRejected(f"'{raw}' is not a regular file")
    return Location("file", str(real), (st.st_dev, st.st_ino))


def _confine_object(scheme: Scheme, rest: str, roots: list[Root]) -> Location:
    if not rest.startswith("//"):
        raise UriRejected(f"write {scheme}://bucket/key")
    if "?" in rest or "#" in rest:
        raise UriRejected(
            "query strings and fragments are not accepted: filesystem options are the "
            "server's to set, not the caller's"
        )
    bucket, _, key = rest[2:].partition("/")
    if "@" in bucket or ":" in bucket:
        raise UriRejected("credentials or a port do not belong in a dataset URI")
    if not _BUCKET[scheme].match(bucket):
        raise UriRejected(f"'{bucket}' is not a valid {scheme} bucket name")
    if not key:
        raise UriRejected(f"{scheme}://{bucket} names a bucket; name an object in it")
    path = f"{bucket}/{key}"
    if not roots:
        raise UriRejected(
            f"no {scheme}:// bucket is open for datasets; an operator allows one with "
            "CRUCIBLE_DATASET_ROOTS"
        )
    if not any(_under(path, r.path) for r in roots):
        raise UriRejected(f"'{scheme}://{path}' is outside the allowed roots ({_listed(roots)})")
    return Location(scheme, path)


def _listed(roots: list[Root]) -> str:
    return ", ".join(str(r) for r in roots)


def filesystem_uri(loc: Location) -> str:
    """The URI handed to pyarrow: written here, so no caller text reaches its option parser
    (the key is quoted; pyarrow decodes it back to exactly ``loc.path``)."""
    bucket, _, key = loc.path.partition("/")
    options = f"?retry_limit_seconds={GCS_RETRY_LIMIT_S}" if loc.scheme == "gs" else ""
    return f"{loc.scheme}://{bucket}/{quote(key, safe='/')}{options}"


def stored_location(uri: str) -> Location:
    """The location of a URI this service stored (``Location.uri``), to read it again."""
    m = _SCHEME.match(uri)
    if m is None:
        return Location("file", uri)
    scheme = _object_scheme(m.group(1))
    if scheme is None:
        raise UriRejected(f"'{uri}' is not a dataset location")
    return Location(scheme, uri[m.end() :].removeprefix("//"))


@contextmanager
def open_location(loc: Location) -> Iterator[pa.NativeFile]:
    """A random-access file for a location; raises :class:`UriRejected` when it can't be read."""
    if loc.scheme == "file":
        with _open_local(loc) as f:
            yield f
        return
    try:
        fs, path = pafs.FileSystem.from_uri(filesystem_uri(loc))
        if path != loc.path:
            raise UriRejected(f"pyarrow reads '{loc.uri}' as '{path}'")
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise UriRejected(f"no object at '{loc.uri}'")
        f = fs.open_input_file(path)
    except (OSError, pa.ArrowException) as exc:
        raise UriRejected(f"could not read '{loc.uri}': {exc}") from None
    with f:
        yield f


@contextmanager
def _open_local(loc: Location) -> Iterator[pa.NativeFile]:
    # O_NOFOLLOW: the last component was resolved already, a symlink there now is a swap;
    # O_NONBLOCK: a FIFO swapped in must not block the open.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(loc.path, flags)
    except OSError as exc:
        raise UriRejected(f"could not open '{loc.path}': {exc.strerror}") from None
    with os.fdopen(fd, "rb") as raw:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (
            loc.identity is not None and (st.st_dev, st.st_ino) != loc.identity
        ):
            raise UriRejected(f"'{loc.path}' changed while it was being checked")
        with pa.PythonFile(raw, mode="r") as f:
            yield f
