"""Tune's experiment state, signed by the driver and verified before Tune unpickles any of it.

Tune keeps a search's state in the experiment folder as pickles: ``tuner.pkl``,
``experiment_state-*.json`` (JSON whose trial entries embed cloudpickle),
``basic-variant-state-*.json`` and ``search_gen_state-*.json`` (cloudpickle despite the
name), ``searcher-state-*.pkl``, ``callback-states-*.pkl``, and each failed trial's
``error.pkl``. A relaunched driver restores the search from them, so whoever could replace one
in the artifact store could run code as the driver.

Everything Tune reads from or writes to the artifact store goes through the storage filesystem
it is given (the driver's local staging folder aside: a restore fills it from the store, through
that filesystem), so this module gives it one: the local filesystem, except that a state file
(:func:`is_state_file`) is written atomically with an HMAC beside it and is served to Tune only
once its bytes match that HMAC. The key is derived from the job's token, which the control
plane derives from its secret and the job id: a relaunched driver of the same job has the same
key, the artifact store never holds it, and another job's key signs nothing of this one.

Verification happens in the read itself (the bytes checked are the bytes Tune unpickles: no
window between a check and a later read), and :func:`verify_experiment` checks every state file
a restore reads before Tune is asked to restore, so a refusal names the file instead of Tune
catching it and quietly starting the search over (:func:`check`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs

SIGNATURE_SUFFIX = ".crucible-sig"
_TMP_SUFFIX = ".crucible-tmp"
_KEY_CONTEXT = b"crucible: tune experiment state v1"
# A signature file keeps the newest few accepted MACs: while a write is being committed both
# the old and the new content must verify (see _commit).
_KEEP = 4

# The driver's keys by storage root. The filesystem object travels inside Tune's state (and
# to trial workers), so it must not carry the key itself: the state would hold it.
_KEYS: dict[str, bytes] = {}
# What this process refused since its search began: Tune catches errors while resuming and
# starts the search over, so a refusal is also recorded here for :func:`check` to raise.
_REFUSED: list[str] = []
_LOCK = threading.Lock()


class StateRefused(RuntimeError):
    """A state file of the search failed verification; nothing of it was unpickled."""


def state_key(job_token: str) -> bytes:
    """The experiment state's signing key. A key of its own, derived from the job's token
    (which also authenticates the driver to the API): one secret, kept apart in its uses."""
    return hmac.new(job_token.encode(), _KEY_CONTEXT, hashlib.sha256).digest()


def is_state_file(rel: str) -> bool:
    """Whether Tune may unpickle this file (``rel``: relative to the storage root, the
    experiment's name first). Every ``.pkl``, and the ``.json`` files at the top of an
    experiment (Tune's own state and the searchers'; a restore copies all of them to the
    driver). A trial's ``result.json``, ``params.json`` and checkpoint files are plain data
    read with ``json`` and safetensors, and are left as they are."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return False
    return parts[-1].endswith(".pkl") or (len(parts) <= 2 and parts[-1].endswith(".json"))


def _mac(key: bytes, rel: str, digest: str) -> str:
    # The path is signed with the content: a state file cannot stand in for another.
    return hmac.new(key, f"{rel}\0{digest}".encode(), hashlib.sha256).hexdigest()


def _signature_path(path: str) -> str:
    return path + SIGNATURE_SUFFIX


def _read_macs(path: str) -> list[str]:
    try:
        doc = json.loads(Path(_signature_path(path)).read_text())
    except (OSError, ValueError):
        return []
    macs = doc.get("macs") if isinstance(doc, dict) else None
    return [m for m in macs if isinstance(m, str)] if isinstance(macs, list) else []


def _macs_doc(macs: list[str]) -> bytes:
    return json.dumps({"macs": macs}).encode()


def _unchanged(path: str, digest: str) -> bool:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: str, data: bytes) -> None:
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _SignedWriter:
    """The stream Tune writes a state file through: the bytes go to a temporary file, and
    closing it commits them with their signature (:meth:`SignedLocalHandler._commit`)."""

    def __init__(self, handler: SignedLocalHandler, path: str, rel: str) -> None:
        self._handler, self._path, self._rel = handler, path, rel
        self._tmp = (
            f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}{_TMP_SUFFIX}"
        )
        self._file = open(self._tmp, "wb")  # noqa: SIM115 (closed in close())
        self._hash = hashlib.sha256()
        self.closed = False

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self._file.write(view)
        self._hash.update(view)
        return view.nbytes

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self._file.close()
            self._handler._commit(self._path, self._rel, self._tmp, self._hash.hexdigest())
        except BaseException:
            self._file.close()
            Path(self._tmp).unlink(missing_ok=True)
            raise


class SignedLocalHandler(pyarrow.fs.FileSystemHandler):
    """The local filesystem, with Tune's state files signed on write and verified on read.

    Only the storage root's path is kept (picklable, no key): the key is looked up in this
    process's registry, which only the driver fills (:func:`signed_filesystem`)."""

    def __init__(self, root: str) -> None:
        self.root = os.path.normpath(os.path.abspath(root))
        self._fs = pyarrow.fs.LocalFileSystem()

    def __reduce__(self) -> tuple[Any, ...]:
        return (SignedLocalHandler, (self.root,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SignedLocalHandler) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)

    # --- what is signed -----------------------------------------------------------------

    def _rel(self, path: str) -> str | None:
        """``path`` relative to the storage root when it is a state file, else None."""
        full = os.path.normpath(os.path.abspath(path))
        if not full.startswith(self.root + os.sep):
            return None
        rel = Path(os.path.relpath(full, self.root)).as_posix()
        return rel if is_state_file(rel) else None

    def _key(self) -> bytes:
        key = _KEYS.get(self.root)
        if key is None:
            # Only the driver signs and verifies; a trial never touches the state files.
            raise StateRefused(f"no key to sign or verify the search state under {self.root}")
        return key

    def _refuse(self, rel: str, why: str) -> StateRefused:
        message = f"{rel} {why}"
        with _LOCK:
            _REFUSED.append(message)
        return StateRefused(message)

    def read_verified(self, path: str, rel: str) -> bytes:
        """The file's bytes, once they match the signature this job's driver wrote."""
        key = self._key()
        try:
            data = Path(path).read_bytes()
        except FileNotFoundError:
            raise  # no file is no state: Tune handles that as it always has
        except OSError as exc:
            raise self._refuse(rel, f"could not be read ({exc})") from exc
        macs = _read_macs(path)
        if not macs:
            raise self._refuse(rel, "has no signature of this job's driver")
        expected = _mac(key, rel, hashlib.sha256(data).hexdigest())
        if not any(hmac.compare_digest(expected, m) for m in macs):
            raise self._refuse(
                rel, "does not match the signature this job's driver wrote (it was changed)"
            )
        return data

    def _commit(self, path: str, rel: str, tmp: str, digest: str) -> None:
        """Put a written state file in place with its signature, so that a driver killed at
        any point leaves a file that verifies: the signature first accepts the old content
        and the new, then the file is renamed over the old one, then the old is dropped."""
        new = _mac(self._key(), rel, digest)
        with _LOCK:
            macs = _read_macs(path)
            if _unchanged(path, digest) and any(hmac.compare_digest(new, m) for m in macs):
                # Tune uploads every file of the experiment at each sync, most of them as
                # they were (a trial's params.pkl): those are in place and signed already.
                os.unlink(tmp)
                if len(macs) > 1:
                    _write_atomically(_signature_path(path), _macs_doc([new]))
                return
            _fsync(tmp)
            accepted = [*[m for m in macs if m != new][-(_KEEP - 1) :], new]
            _write_atomically(_signature_path(path), _macs_doc(accepted))
            os.replace(tmp, path)
            _write_atomically(_signature_path(path), _macs_doc([new]))

    def _sign_bytes(self, path: str, rel: str, data: bytes) -> None:
        writer = _SignedWriter(self, path, rel)
        writer.write(data)
        writer.close()

    # --- pyarrow.fs.FileSystemHandler ----------------------------------------------------

    def get_type_name(self) -> str:
        return "crucible-signed-local"

    def normalize_path(self, path: str) -> str:
        return str(self._fs.normalize_path(path))

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return list(self._fs.get_file_info(paths))

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[Any]:
        return list(self._fs.get_file_info(selector))

    def create_dir(self, path: str, recursive: bool) -> None:
        self._fs.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self._fs.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self._fs.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to empty the filesystem's root")

    def delete_file(self, path: str) -> None:
        self._fs.delete_file(path)
        if self._rel(path) is not None:
            Path(_signature_path(path)).unlink(missing_ok=True)

    def move(self, src: str, dest: str) -> None:
        self.copy_file(src, dest)
        self.delete_file(src)

    def copy_file(self, src: str, dest: str) -> None:
        dest_rel, src_rel = self._rel(dest), self._rel(src)
        if dest_rel is None:
            self._fs.copy_file(src, dest)
            return
        if src_rel is None:
            # Signing a file nobody verified would launder it into trusted state.
            raise StateRefused(f"refusing to sign {dest_rel}: copied from an unsigned file")
        self._sign_bytes(dest, dest_rel, self.read_verified(src, src_rel))

    def open_input_stream(self, path: str) -> pa.NativeFile:
        rel = self._rel(path)
        if rel is None:
            return self._fs.open_input_stream(path)
        return pa.BufferReader(self.read_verified(path, rel))

    def open_input_file(self, path: str) -> pa.NativeFile:
        rel = self._rel(path)
        if rel is None:
            return self._fs.open_input_file(path)
        return pa.BufferReader(self.read_verified(path, rel))

    def open_output_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        rel = self._rel(path)
        if rel is None:
            return self._fs.open_output_stream(path, metadata=metadata)
        return pa.PythonFile(_SignedWriter(self, path, rel), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pa.NativeFile:
        rel = self._rel(path)
        if rel is not None:
            raise StateRefused(f"refusing to append to {rel}: state files are written whole")
        return self._fs.open_append_stream(path, metadata=metadata)


def signed_filesystem(root: Path, key: bytes) -> pyarrow.fs.PyFileSystem:
    """The storage filesystem for a search under ``root``, signing with ``key`` in this
    process. A driver runs one search at a time: what an earlier one refused is forgotten."""
    handler = SignedLocalHandler(str(root))
    with _LOCK:
        _KEYS[handler.root] = key
        _REFUSED.clear()
    return pyarrow.fs.PyFileSystem(handler)


def _handler(fs: pyarrow.fs.FileSystem) -> SignedLocalHandler:
    handler = getattr(fs, "handler", None)
    if not isinstance(handler, SignedLocalHandler):
        raise TypeError("not a filesystem made by signed_filesystem()")
    return handler


def is_local(fs: pyarrow.fs.FileSystem) -> bool:
    """Whether paths on ``fs`` are paths on this machine's disk."""
    return isinstance(fs, pyarrow.fs.LocalFileSystem) or isinstance(
        getattr(fs, "handler", None), SignedLocalHandler
    )


def verify_experiment(fs: pyarrow.fs.FileSystem, experiment: Path) -> None:
    """Check every state file at the top of ``experiment`` (all that a restore reads: the
    tuner, the newest experiment state, and every ``.json``/``.pkl`` Tune copies to the
    driver for its searcher and callbacks) before Tune is asked to restore from them."""
    handler = _handler(fs)
    problems: list[str] = []
    for entry in sorted(os.scandir(experiment), key=lambda e: e.name):
        path = os.path.join(experiment, entry.name)
        rel = handler._rel(path)
        if rel is None or not entry.is_file(follow_symlinks=False):
            if rel is not None:  # a link or a folder under a state file's name
                problems.append(str(handler._refuse(rel, "is not a plain file")))
            continue
        try:
            handler.read_verified(path, rel)
        except StateRefused as exc:
            problems.append(str(exc))
    if problems:
        raise StateRefused("; ".join(problems))


def check(experiment_name: str) -> None:
    """Raise if anything of this experiment's state was refused since its search began, even
    where Tune caught the error (it catches a failed resume and starts the search over)."""
    with _LOCK:
        refused = [r for r in _REFUSED if r.startswith(f"{experiment_name}/")]
    if refused:
        raise StateRefused("; ".join(dict.fromkeys(refused)))
