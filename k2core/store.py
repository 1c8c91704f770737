"""Versioned artifact store: one interface, a local-directory backend and an S3 backend.

Layout under the store root (a directory, or ``s3://bucket/prefix``)::

    artifacts/<stage>/<version>/manifest.json   the commit point, written last
    artifacts/<stage>/<version>/<files...>      data files, sha256 recorded in the manifest
    rejected/<stage>/<version>-<utc>/...        outputs whose quality gate failed (never read as inputs)
    runs/<run_id>.json                          run records

A stage builds its output in a local *work dir*; `commit` publishes it. Local: the manifest is
written into the work dir, then the directory is renamed into place (atomic on one file system).
S3: every data object is uploaded first, the manifest last. Readers only trust artifacts whose
manifest exists, and verify each file's sha256 against it before use.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Callable, Iterator

from k2core.errors import K2Error

MANIFEST = "manifest.json"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


class StoreError(K2Error):
    """A store operation failed (missing artifact, bad key, unreachable backend)."""


class IntegrityError(StoreError):
    """A file's content does not match the sha256 its manifest recorded."""


def check_key(key: str) -> str:
    """Reject keys that could escape the store or confuse a backend: `..`, absolute paths, odd chars."""
    if not key or key.startswith("/") or key.endswith("/") or "\\" in key:
        raise StoreError(f"invalid store key {key!r}: must be a relative path like 'a/b.parquet'")
    for seg in key.split("/"):
        if seg in ("", ".", "..") or not _SEGMENT.match(seg):
            raise StoreError(f"invalid store key {key!r}: segment {seg!r} is not allowed "
                             "(letters, digits and . _ = + - only; no '..' or empty segments)")
    return key


def sha256_file(path: Path, bufsize: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(bufsize):
            h.update(chunk)
    return h.hexdigest()


def file_entries(workdir: Path) -> list[dict[str, Any]]:
    """Every data file under workdir with its size and sha256 (sorted, manifest excluded)."""
    out = []
    for p in sorted(workdir.rglob("*")):
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".k2"):
            rel = p.relative_to(workdir).as_posix()
            check_key(rel)
            out.append({"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)})
    return out


def s3_client(endpoint_url: str | None = None, region: str | None = None):
    """A boto3 S3 client; credentials come from the standard AWS chain only."""
    import boto3  # lazy: keeps `k2 --help` fast

    return boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region)


def artifact_prefix(stage: str, version: str) -> str:
    return check_key(f"artifacts/{stage}/{version}")


class Artifact:
    """A committed artifact: its manifest plus verified access to its files."""

    def __init__(self, store: "Store", manifest: dict[str, Any]):
        self.store = store
        self.manifest = manifest
        self._files = {f["path"]: f for f in manifest.get("files", [])}
        self._verified: set[str] = set()

    stage = property(lambda self: self.manifest["stage"])
    version = property(lambda self: self.manifest["version"])
    metrics = property(lambda self: self.manifest.get("metrics", {}))

    @property
    def ref(self) -> str:
        return f"{self.stage}/{self.version}"

    @property
    def location(self) -> str:
        return self.store.describe(artifact_prefix(self.stage, self.version))

    def files(self, prefix: str = "") -> list[str]:
        return [p for p in self._files if p.startswith(prefix)]

    def path(self, rel: str) -> Path:
        """A local path to `rel`, its sha256 verified against the manifest (once per process)."""
        entry = self._files.get(rel)
        if entry is None:
            raise StoreError(f"{self.ref} has no file {rel!r}")
        local = self.store.local_file(f"{artifact_prefix(self.stage, self.version)}/{rel}", entry)
        if rel not in self._verified:
            actual = sha256_file(local)
            if actual != entry["sha256"]:
                raise IntegrityError(f"{self.ref}/{rel}: sha256 {actual[:12]}… does not match the "
                                     f"manifest's {entry['sha256'][:12]}… (corrupted or tampered)")
            self._verified.add(rel)
        return local

    def verify(self) -> None:
        for rel in self._files:
            self.path(rel)


class Store(ABC):
    """Backend-independent operations; subclasses implement the object primitives and commit."""

    uri: str

    # -- primitives
    @abstractmethod
    def exists(self, key: str) -> bool: ...
    @abstractmethod
    def get_bytes(self, key: str) -> bytes: ...
    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None: ...
    @abstractmethod
    def list(self, prefix: str) -> list[str]: ...
    @abstractmethod
    def local_file(self, key: str, entry: dict[str, Any] | None = None) -> Path: ...
    @abstractmethod
    def describe(self, key: str) -> str: ...
    @abstractmethod
    def scratch_root(self) -> Path: ...
    @abstractmethod
    def _publish(self, prefix: str, workdir: Path, manifest_bytes: bytes, replace: bool = False) -> None: ...

    # -- JSON helpers
    def get_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    # -- artifacts
    def has_artifact(self, stage: str, version: str) -> bool:
        return self.exists(f"{artifact_prefix(stage, version)}/{MANIFEST}")

    def artifact(self, stage: str, version: str) -> Artifact:
        key = f"{artifact_prefix(stage, version)}/{MANIFEST}"
        if not self.exists(key):
            raise StoreError(f"no committed artifact {stage}/{version} in {self.uri}")
        return Artifact(self, self.get_json(key))

    def artifacts(self, stage: str | None = None) -> list[tuple[str, str]]:
        """(stage, version) of every committed artifact, optionally of one stage."""
        prefix = f"artifacts/{stage}/" if stage else "artifacts/"
        out = []
        for key in self.list(prefix):
            parts = key.split("/")
            if len(parts) == 4 and parts[3] == MANIFEST:
                out.append((parts[1], parts[2]))
        return sorted(out)

    def newest(self, stage: str, keep: Callable[[Artifact], bool] | None = None) -> Artifact | None:
        """The most recently created committed artifact of `stage` (that `keep` accepts), or None."""
        best: Artifact | None = None
        for s, version in self.artifacts(stage):
            art = self.artifact(s, version)
            if (keep is None or keep(art)) and (best is None or art.manifest.get("created_at", "") >
                                                best.manifest.get("created_at", "")):
                best = art
        return best

    @contextlib.contextmanager
    def workdir(self, stage: str, version: str) -> Iterator[Path]:
        """An exclusive local work dir for building (stage, version); stale leftovers are wiped."""
        root = self.scratch_root() / stage
        root.mkdir(parents=True, exist_ok=True)
        lock_path = root / f"{version}.lock"
        with open(lock_path, "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreError(f"{stage}/{version} is being built by another process "
                                 f"(lock {lock_path})") from None
            wd = root / version
            if wd.exists():  # a crashed earlier attempt: nothing of it was ever visible
                shutil.rmtree(wd)
            wd.mkdir()
            try:
                yield wd
            finally:
                shutil.rmtree(wd, ignore_errors=True)

    def commit(self, stage: str, version: str, workdir: Path, manifest: dict[str, Any],
               replace: bool = False) -> Artifact:
        """Record every file's sha256 in the manifest and publish; the manifest goes last.

        An existing artifact of the same version is kept (same inputs, same result) unless
        `replace` (a forced recompute) asks to swap it for the new output.
        """
        manifest = dict(manifest, stage=stage, version=version, files=file_entries(workdir))
        data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
        if replace or not self.has_artifact(stage, version):
            self._publish(artifact_prefix(stage, version), workdir, data, replace=replace)
        return self.artifact(stage, version)

    def reject(self, stage: str, version: str, workdir: Path, report: dict[str, Any]) -> str:
        """Keep a gate-failed output aside for inspection; returns where it went."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        prefix = check_key(f"rejected/{stage}/{version}-{stamp}")
        manifest = dict(report, stage=stage, version=version, files=file_entries(workdir))
        self._publish(prefix, workdir, json.dumps(manifest, indent=2, default=str).encode())
        return self.describe(prefix)


class LocalStore(Store):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.uri = str(self.root)

    def _p(self, key: str) -> Path:
        return self.root / check_key(key)

    def exists(self, key: str) -> bool:
        return self._p(key).is_file()

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._p(key).read_bytes()
        except FileNotFoundError:
            raise StoreError(f"{self.describe(key)} does not exist") from None

    def put_bytes(self, key: str, data: bytes) -> None:
        path = self._p(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)  # readers see the old or the new file, never half of one

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix.rstrip("/") if prefix else self.root
        if not base.exists():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.startswith("."))

    def local_file(self, key: str, entry: dict[str, Any] | None = None) -> Path:
        path = self._p(key)
        if not path.is_file():
            raise StoreError(f"{self.describe(key)} does not exist")
        return path

    def describe(self, key: str) -> str:
        return str(self.root / key)

    def scratch_root(self) -> Path:
        return self.root / ".staging"

    def _publish(self, prefix: str, workdir: Path, manifest_bytes: bytes, replace: bool = False) -> None:
        (workdir / MANIFEST).write_bytes(manifest_bytes)
        dest = self.root / prefix
        dest.parent.mkdir(parents=True, exist_ok=True)
        if replace and dest.exists():
            old = workdir.with_name(f"{workdir.name}.replaced-{os.getpid()}")
            os.rename(dest, old)
            shutil.rmtree(old)
        try:
            os.rename(workdir, dest)  # atomic: the artifact appears whole or not at all
        except OSError:
            if not (dest / MANIFEST).is_file():  # not a concurrent commit of the same version
                raise
        workdir.mkdir(exist_ok=True)  # the caller's work-dir context removes it


class S3Store(Store):
    """`s3://bucket/prefix` through boto3; credentials from the standard AWS chain only."""

    def __init__(self, uri: str, endpoint_url: str | None = None, region: str | None = None,
                 cache_dir: str | Path | None = None):
        m = re.match(r"^s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:/(.*))?$", uri)
        if not m:
            raise StoreError(f"invalid S3 URI {uri!r}: expected s3://bucket[/prefix]")
        self.bucket, prefix = m.group(1), (m.group(2) or "").strip("/")
        if prefix:
            check_key(prefix)
        self.prefix = prefix
        self.uri = f"s3://{self.bucket}" + (f"/{prefix}" if prefix else "")
        self.client = s3_client(endpoint_url, region)
        base = Path(cache_dir or os.environ.get("K2_CACHE", Path.home() / ".cache" / "k2"))
        self._cache = base.expanduser() / "s3" / hashlib.sha256(
            f"{endpoint_url}|{self.uri}".encode()).hexdigest()[:16]

    def _k(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, what: str, fn, **kw):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kw)
        except ClientError as e:
            code = e.response.get("Error", {}).get("Code", "?")
            raise StoreError(f"S3 {what} on {self.uri} failed: {code}") from None
        except BotoCoreError as e:
            raise StoreError(f"S3 {what} on {self.uri} failed: {e}") from None

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._k(key))
            return True
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StoreError(f"S3 head on {self.describe(key)} failed: "
                             f"{e.response.get('Error', {}).get('Code')}") from None

    def get_bytes(self, key: str) -> bytes:
        return self._call("get", self.client.get_object, Key=self._k(key))["Body"].read()

    def put_bytes(self, key: str, data: bytes) -> None:
        self._call("put", self.client.put_object, Key=self._k(key), Body=data)

    def list(self, prefix: str) -> list[str]:
        full = self._k(prefix.rstrip("/")) + "/" if prefix else (self.prefix + "/" if self.prefix else "")
        strip = len(self.prefix) + 1 if self.prefix else 0
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
            out.extend(obj["Key"][strip:] for obj in page.get("Contents", []))
        return sorted(out)

    def local_file(self, key: str, entry: dict[str, Any] | None = None) -> Path:
        """Download to the local cache once; a cached copy is reused while its hash still matches."""
        dest = self._cache / check_key(key)
        if dest.is_file() and entry is not None and dest.stat().st_size == entry["size"] \
                and sha256_file(dest) == entry["sha256"]:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part-{os.getpid()}")
        self._call("download", lambda Bucket, **kw: self.client.download_file(Bucket, self._k(key), str(tmp)))
        os.replace(tmp, dest)
        return dest

    def describe(self, key: str) -> str:
        return f"{self.uri}/{key}"

    def scratch_root(self) -> Path:
        return self._cache / ".staging"

    def _publish(self, prefix: str, workdir: Path, manifest_bytes: bytes, replace: bool = False) -> None:
        if replace and self.exists(f"{prefix}/{MANIFEST}"):
            self._call("delete", self.client.delete_object, Key=self._k(f"{prefix}/{MANIFEST}"))
        for p in sorted(workdir.rglob("*")):
            if p.is_file() and p.name != MANIFEST:
                rel = p.relative_to(workdir).as_posix()
                self._call("upload", lambda Bucket, **kw: self.client.upload_file(
                    str(p), Bucket, self._k(f"{prefix}/{rel}")))
        self.put_bytes(f"{prefix}/{MANIFEST}", manifest_bytes)  # the commit point


def open_store(uri: str, endpoint_url: str | None = None, region: str | None = None) -> Store:
    if uri.startswith("s3://"):
        return S3Store(uri, endpoint_url=endpoint_url, region=region)
    if "://" in uri:
        raise StoreError(f"unsupported store URI {uri!r}: use a local directory or s3://bucket/prefix")
    return LocalStore(uri)
