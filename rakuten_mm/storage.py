"""Local paths and ``s3://bucket/prefix`` URIs behind one small API (boto3; ``AWS_ENDPOINT_URL`` honoured).

Safety rules, for bundles and datasets alike:

* **No path escapes.** Every object key is checked before anything is written: a key whose path relative to the
  prefix is absolute, has an empty, ``.`` or ``..`` segment, or would land outside the download directory is
  refused with a :class:`StorageError` naming it (:func:`safe_relative`). Local symlinks are judged by
  :func:`inside`: followed only when they resolve inside the directory being read (the directory itself may be a
  link, e.g. a KServe mount); a link out of it is refused.
* **Publishing never breaks a good copy.** Local: the new directory is staged beside the target and renamed into
  place, so readers see the old or the new one, whole; an existing target is replaced only when it is empty or
  holds the commit marker (``last``: the bundle manifest) or a publish pointer, never a directory of other files.
  S3 has no rename, so a publish to ``s3://b/p`` is *immutable and versioned*: the files go to a fresh prefix
  ``s3://b/p/versions/<id>/`` (commit marker last), then one PUT of the pointer object ``s3://b/p/current.json``
  switches readers to it, then versions other than the new one and the one it replaced are deleted (keeping the
  previous version lets a reader that resolved the pointer just before the switch finish its download). An
  interrupted publish therefore leaves the previous bundle at ``s3://b/p`` loadable, and a finished one is exactly
  the new bundle's files: readers (:func:`resolve`, :func:`local_copy`) follow the pointer, on S3 and in a local
  mirror of the prefix (what KServe's storage initializer downloads to ``/mnt/models``). A prefix without a pointer
  (a bundle uploaded by hand, a dataset) is read as is. Publishing over a legacy flat bundle deletes the files its
  manifest lists once the pointer is in place, and nothing else. One publisher per URI at a time: with two, the
  last pointer wins and a pruned version fails to load with a clear error, never silently.
* **Readable by other users.** Published directories get mode ``0777 & ~umask`` and files ``0666 & ~umask``
  (0755 / 0644 under the usual umask 022), so a bundle written by one user loads as another (the serving image's
  non-root user), whatever private mode the staging directory had.
* **Errors are typed.** Every boto3/botocore error and local I/O error becomes a :class:`StorageError` naming the
  URI; :func:`check_writable` tries the output before a long training run starts.

Transfers, for datasets of ~100k small objects: a step reads only the objects it needs. :func:`list_objects` lists
a prefix once (keys, sizes); :func:`fetch` downloads a given set of keys into a directory and :func:`read_each`
streams them through a function without writing them anywhere (at most ``concurrency`` objects in memory);
:func:`local_files` is the context manager steps use (a local directory as is, else a temporary download of just
those keys). Requests run ``concurrency`` at a time on one client whose connection pool has as many connections:
``RAKUTEN_S3_CONCURRENCY`` (default :data:`DEFAULT_CONCURRENCY`), read when a transfer starts; an invalid value is a
:class:`~rakuten_mm.errors.ConfigError`. Transient failures are retried: botocore's ``standard`` retry mode for the
request (throttling, 5xx, connection errors; ``AWS_MAX_ATTEMPTS`` overrides :data:`MAX_ATTEMPTS`), and a body that
breaks off mid-stream is fetched again, up to :data:`MAX_ATTEMPTS` times. A download lands under a temporary name
and is renamed into place, so a failed transfer never leaves a truncated file under the object's name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from rakuten_mm.env import int_setting
from rakuten_mm.errors import StorageError

S3_PREFIX = "s3://"
POINTER = "current.json"  # the publish pointer: {"format": 1, "version": "<id>"}
VERSIONS = "versions"  # immutable published copies live under <prefix>/versions/<id>/
KEEP_VERSIONS = 2  # the current version and the one it replaced
POINTER_FORMAT = 1
_VERSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
CONCURRENCY_ENV = "RAKUTEN_S3_CONCURRENCY"
DEFAULT_CONCURRENCY = 32  # concurrent requests per transfer: ~20 ms first-byte latency hides behind 32 in flight
MAX_CONCURRENCY = 512
MAX_ATTEMPTS = 5  # per request (botocore standard retries) and per body read
_CHUNK = 1 << 20
_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_R = TypeVar("_R")


def is_s3(uri: str | os.PathLike[str]) -> bool:
    return str(uri).startswith(S3_PREFIX)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` → ``("bucket", "a/b")``; the key prefix has no trailing slash."""
    if not is_s3(uri):
        raise StorageError(f"expected an s3://bucket/prefix URI, got {uri!r}")
    bucket, _, key = uri[len(S3_PREFIX):].partition("/")
    if not bucket:
        raise StorageError(f"s3 URI has no bucket: {uri!r}")
    return bucket, key.strip("/")


def _join(prefix: str, rel: str) -> str:
    return f"{prefix}/{rel}" if prefix else rel


def s3_client(config: Any = None) -> Any:
    """A boto3 S3 client; boto3 itself reads ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` and credentials."""
    import boto3

    return boto3.client("s3", config=config)


def transfer_concurrency(value: int | str | None = None) -> int:
    """Concurrent requests per transfer: ``value``, else ``RAKUTEN_S3_CONCURRENCY``, else the default (32).

    :class:`ConfigError` for anything but an integer from 1 to :data:`MAX_CONCURRENCY`.
    """
    raw = value if value is not None else os.environ.get(CONCURRENCY_ENV) or DEFAULT_CONCURRENCY
    return int_setting(raw, CONCURRENCY_ENV, "concurrent S3 requests per transfer", MAX_CONCURRENCY)


def transfer_client(concurrency: int) -> Any:
    """A client for ``concurrency`` threads: as many pooled connections, botocore's standard retries."""
    from botocore.config import Config

    retries: dict[str, Any] = {"mode": "standard"}
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["max_attempts"] = MAX_ATTEMPTS
    return s3_client(Config(max_pool_connections=max(10, concurrency), retries=retries))


def _s3_errors() -> tuple[type[BaseException], ...]:
    """Everything boto3/botocore/s3transfer raise for a failed call (they share no base class)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    return BotoCoreError, ClientError, Boto3Error


def _error_code(exc: BaseException) -> str:
    return str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))


# ---- paths ---------------------------------------------------------------------------------------------------------

def safe_relative(rel: str, what: str) -> tuple[str, ...]:
    """``a/b.jpg`` → ``("a", "b.jpg")``; :class:`StorageError` for a path that could land outside its directory.

    Refused: absolute paths, empty, ``.`` and ``..`` segments, backslashes and NUL characters. ``what`` names the
    source in the message (an object key, a manifest entry).
    """
    parts = tuple(rel.split("/"))
    if (not rel or rel.startswith("/") or "\\" in rel or "\0" in rel
            or any(p in ("", ".", "..") for p in parts)):
        raise StorageError(f"refusing {what}: its path {rel!r} is not a plain relative path and could land outside "
                           "the destination directory")
    return parts


def inside(root: Path, path: Path) -> Path:
    """``path`` resolved (symlinks followed), or :class:`StorageError` when it resolves outside ``root``."""
    base = root.resolve()
    try:
        target = path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
        raise StorageError(f"cannot resolve {path}: {exc}") from None
    if target != base and base not in target.parents:
        raise StorageError(f"{path} points outside {root} (to {target}); links out of the directory are refused")
    return target


def _umask() -> int:
    """The process umask, read without changing it where the platform allows (os.umask is process-wide)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_shareable(root: Path) -> None:
    """Give ``root`` and everything under it the modes a fresh ``mkdir``/``open`` would: 0777/0666 & ~umask."""
    mask = _umask()
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, 0o777 & ~mask)
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o666 & ~mask)


# ---- S3 ------------------------------------------------------------------------------------------------------------

def _list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def bounded_map(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``fn(item)`` for every item, ``workers`` at a time on a thread pool, results in order.

    At most ``4 × workers`` items are submitted ahead of the one being yielded, so memory does not grow with the
    number of items (a list of 100k keys is fine). The first error is raised once the items before it are yielded;
    items not yet started are cancelled.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="transfer") as pool:
        pending: deque[Future[_R]] = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= 4 * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def _parallel(fn: Any, items: list[Any], workers: int | None = None) -> None:
    """``fn(item)`` for every item on a thread pool (boto3 clients are thread-safe); the first error wins."""
    for _ in bounded_map(fn, items, min(workers or transfer_concurrency(), max(1, len(items)))):
        pass


def _read_pointer(client: Any, bucket: str, prefix: str) -> str | None:
    """The version id ``<prefix>/current.json`` names, or None when the prefix has no pointer."""
    try:
        body = client.get_object(Bucket=bucket, Key=_join(prefix, POINTER))["Body"].read()
    except _s3_errors() as exc:
        if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
            return None
        raise
    return _pointer_version(body, f"s3://{bucket}/{_join(prefix, POINTER)}")


def _pointer_version(body: bytes, where: str) -> str:
    try:
        pointer = json.loads(body)
        version = pointer["version"] if isinstance(pointer, dict) else None
    except (ValueError, KeyError) as exc:
        raise StorageError(f"publish pointer {where} is unreadable: {exc}") from None
    if not isinstance(version, str) or not _VERSION_ID.fullmatch(version):
        raise StorageError(f"publish pointer {where} names version {version!r}; expected a plain id matching "
                           f"{_VERSION_ID.pattern}")
    return version


def download_dir(uri: str, dest: Path) -> Path:
    """Copy every object under ``uri`` into ``dest`` (created), keeping relative paths.

    Every key is checked before the first byte is written (:func:`safe_relative`); any S3 or local I/O failure is
    a :class:`StorageError` naming ``uri``. This copies the prefix as is: :func:`local_copy` follows a pointer.
    For bundles (a few files, one of them large: ``download_file`` splits it into concurrent ranged GETs); a
    dataset step reads only the keys it needs with :func:`fetch` or :func:`read_each`.
    """
    bucket, prefix = split_s3(uri)
    try:
        concurrency = transfer_concurrency()
        client = transfer_client(concurrency)
        keys = _list_keys(client, bucket, prefix)
        if not keys:
            raise StorageError(f"nothing found under {uri}")
        plan: list[tuple[str, Path]] = []
        for key in keys:
            rel = key[len(prefix) + 1:] if prefix else key  # listed with Prefix "<prefix>/"
            if not rel or rel.endswith("/"):
                continue  # "directory" markers some tools create
            target = dest.joinpath(*safe_relative(rel, f"object key {key!r} under {uri}"))
            plan.append((key, target))
        for _, target in plan:
            target.parent.mkdir(parents=True, exist_ok=True)
        _parallel(lambda item: client.download_file(bucket, item[0], str(item[1])), plan, concurrency)
    except _s3_errors() as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from None
    except OSError as exc:  # local side: disk full, a key that is both a file and a "directory"...
        raise StorageError(f"cannot copy {uri} into {dest}: {exc}") from None
    return dest


# ---- datasets: only the objects a step needs, concurrently ----------------------------------------------------------

@dataclass(frozen=True)
class Listing:
    """The objects under an ``s3://bucket/prefix`` URI: relative key → size in bytes (one ListObjectsV2 walk)."""

    uri: str
    sizes: dict[str, int]

    def is_file(self, rel: str) -> bool:
        return rel in self.sizes

    def is_dir(self, rel: str) -> bool:
        """Some object lies under ``rel/`` (S3 has no directories: a "directory" exists while it holds a key)."""
        head = rel.rstrip("/") + "/"
        return any(key.startswith(head) for key in self.sizes)


def list_objects(uri: str) -> Listing:
    """Every object under ``uri`` (a publish pointer followed, as :func:`local_copy` does), with its size.

    Keys are relative to the prefix; "directory" markers (keys ending in ``/``) are left out. As for
    :func:`download_dir`, a prefix holding a key that is not a plain relative path (:func:`safe_relative`) is
    refused with a :class:`StorageError` naming it, whether or not a step would read that key.
    """
    uri = resolve(uri)
    bucket, prefix = split_s3(uri)
    sizes: dict[str, int] = {}
    try:
        paginator = transfer_client(1).get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) + 1:] if prefix else obj["Key"]
                if rel and not rel.endswith("/"):
                    safe_relative(rel, f"object key {obj['Key']!r} under {uri}")
                    sizes[rel] = int(obj["Size"])
    except _s3_errors() as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from None
    return Listing(uri, sizes)


def _get(client: Any, bucket: str, key: str, sink: Callable[[Iterator[bytes]], _R]) -> _R:
    """``sink`` fed the object's body in chunks; a body that breaks off is fetched again (:data:`MAX_ATTEMPTS`)."""
    from s3transfer.utils import S3_RETRYABLE_DOWNLOAD_ERRORS

    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]  # the request itself: botocore's retries
            try:
                return sink(body.iter_chunks(_CHUNK))
            finally:
                body.close()
        except S3_RETRYABLE_DOWNLOAD_ERRORS as exc:
            if attempt == MAX_ATTEMPTS:
                raise
            _log.info("s3://%s/%s: body read failed (%s); attempt %d of %d", bucket, key, exc, attempt + 1,
                      MAX_ATTEMPTS)
    raise AssertionError("unreachable")


class _LocalWriteError(Exception):
    """A local write failed while a body streamed in: not a network error, so never retried."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


def _write_to(target: Path) -> Callable[[Iterator[bytes]], None]:
    """A sink writing the body under a temporary name beside ``target``, renamed into place once complete."""
    def sink(chunks: Iterator[bytes]) -> None:
        try:
            fd, part = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        except OSError as exc:
            raise _LocalWriteError(exc) from None
        try:
            fh = os.fdopen(fd, "wb")
            try:
                for chunk in chunks:  # network errors surface here (and are retried by _get)
                    try:
                        fh.write(chunk)
                    except OSError as exc:
                        raise _LocalWriteError(exc) from None
            finally:
                try:
                    fh.close()
                except OSError as exc:
                    raise _LocalWriteError(exc) from None
            try:
                os.replace(part, target)
            except OSError as exc:
                raise _LocalWriteError(exc) from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(part)
    return sink


def _mkdirs_inside(dest: Path, directory: Path, checked: set[Path]) -> None:
    """``mkdir -p directory`` one level at a time, each existing level checked first (:func:`inside`), so a
    symlink already under ``dest`` can never make a directory, or a file, appear outside it."""
    current = dest
    for part in directory.relative_to(dest).parts:
        current = current / part
        if current in checked:
            continue
        if current.is_symlink() or current.exists():
            inside(dest, current)
        else:
            current.mkdir(exist_ok=True)
        checked.add(current)


def fetch(uri: str, keys: Iterable[str], dest: Path, concurrency: int | None = None) -> Path:
    """Download the objects ``<uri>/<key>`` for the given relative keys into ``dest/<key>`` (``dest`` created).

    Only those objects are read: one GET each, no listing, ``concurrency`` at a time (default:
    :func:`transfer_concurrency`), retried on transient errors. Every key is checked before the first byte is
    written: one whose path is not plain and relative (:func:`safe_relative`) or whose directory resolves outside
    ``dest`` (a symlink already there) is refused with a :class:`StorageError` naming it. A missing object or any
    other S3 or local failure is a :class:`StorageError` naming ``uri`` (and the key). Returns ``dest``.
    """
    bucket, prefix = split_s3(uri)
    workers = transfer_concurrency(concurrency)
    plan: list[tuple[str, Path]] = []
    for rel in dict.fromkeys(keys):  # each key once, in the order given
        key = _join(prefix, rel)
        plan.append((key, dest.joinpath(*safe_relative(rel, f"object key {key!r} under {uri}"))))
    try:
        dest.mkdir(parents=True, exist_ok=True)
        checked: set[Path] = {dest}
        for _, target in plan:
            _mkdirs_inside(dest, target.parent, checked)
    except OSError as exc:
        raise StorageError(f"cannot copy {uri} into {dest}: {exc}") from None
    client = transfer_client(workers)

    def one(item: tuple[str, Path]) -> None:
        key, target = item
        try:
            _get(client, bucket, key, _write_to(target))
        except _s3_errors() as exc:
            why = "no such object" if _error_code(exc) in ("NoSuchKey", "404", "NotFound") else str(exc)
            raise StorageError(f"cannot read s3://{bucket}/{key} (under {uri}): {why}") from None
        except _LocalWriteError as exc:
            raise StorageError(f"cannot copy s3://{bucket}/{key} into {dest}: {exc.cause}") from None

    _parallel(one, plan, workers)
    return dest


def read_each(uri: str, keys: Iterable[str], fn: Callable[[str, bytes | None], _R],
              concurrency: int | None = None) -> Iterator[_R]:
    """``fn(key, content)`` for every relative key under ``uri``, in order, without writing anything to disk.

    ``content`` is the object's bytes, or ``None`` when there is no such object. ``concurrency`` objects are read
    (and ``fn`` runs) at a time, so at most that many objects are in memory at once. Keys need not be plain
    relative paths here (nothing is written), but every key is read under ``uri``'s prefix. S3 failures other
    than a missing object are a :class:`StorageError` naming the object.
    """
    bucket, prefix = split_s3(uri)
    workers = transfer_concurrency(concurrency)
    client = transfer_client(workers)

    def one(rel: str) -> _R:
        key = _join(prefix, rel)
        try:
            content: bytes | None = _get(client, bucket, key, b"".join)
        except _s3_errors() as exc:
            if _error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                raise StorageError(f"cannot read s3://{bucket}/{key} (under {uri}): {exc}") from None
            content = None
        return fn(rel, content)

    return bounded_map(one, keys, workers)


def local_dir(path: str | os.PathLike[str]) -> Path:
    """A local data or bundle directory, checked (:class:`StorageError` when missing or a file), pointer followed."""
    path = Path(path)
    if not path.exists():
        raise StorageError(f"no such directory: {path}")
    if not path.is_dir():
        raise StorageError(f"{path} is a file; expected a directory or an s3://bucket/prefix URI")
    return _resolve_local(path)


@contextlib.contextmanager
def local_files(uri: str | os.PathLike[str], keys: Iterable[str], concurrency: int | None = None
                ) -> Iterator[Path]:
    """Yield a local directory holding at least the given relative keys of ``uri``.

    A local directory is yielded as is (:func:`local_dir`: nothing is copied, the keys are not checked); for an
    s3 prefix, a temporary directory into which :func:`fetch` downloaded exactly those keys (pointer followed),
    removed afterwards.
    """
    if not is_s3(uri):
        yield local_dir(uri)
        return
    with tempfile.TemporaryDirectory(prefix="rakuten-s3-") as tmp:
        yield fetch(resolve(uri), keys, Path(tmp), concurrency)


def upload_dir(src: Path, uri: str, last: str | None = None) -> None:
    """Upload every file under ``src`` to ``uri`` as is; ``last`` (a relative name) is uploaded after all others.

    A plain copy (datasets, tests). Bundles go through :func:`publish_dir`, which never overwrites a live copy.
    """
    bucket, prefix = split_s3(uri)
    files = sorted(p for p in src.rglob("*") if p.is_file())
    rels = [p.relative_to(src).as_posix() for p in files]
    try:
        concurrency = transfer_concurrency()
        client = transfer_client(concurrency)
        first = [(p, r) for p, r in zip(files, rels, strict=True) if r != last]
        _parallel(lambda item: client.upload_file(str(item[0]), bucket, _join(prefix, item[1])), first, concurrency)
        if last is not None and last in rels:
            client.upload_file(str(src / last), bucket, _join(prefix, last))
    except _s3_errors() as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from None
    except OSError as exc:
        raise StorageError(f"cannot upload {src} to {uri}: {exc}") from None


def new_version_id() -> str:
    """A sortable, unique id for one publish: UTC time to the microsecond + a random suffix."""
    now = time.time()
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime(now)) + f"{now % 1:.6f}"[1:] + "Z-" + uuid.uuid4().hex[:8]


def _publish_s3(src: Path, dest: str, last: str | None) -> str:
    bucket, prefix = split_s3(dest)
    version = new_version_id()
    upload_dir(src, f"{S3_PREFIX}{bucket}/{_join(prefix, f'{VERSIONS}/{version}')}", last=last)
    try:
        client = s3_client()
        previous = _read_pointer(client, bucket, prefix)
        body = json.dumps({"format": POINTER_FORMAT, "version": version}).encode()
        client.put_object(Bucket=bucket, Key=_join(prefix, POINTER), Body=body, ContentType="application/json")
    except _s3_errors() as exc:
        raise StorageError(f"cannot write {dest}: {exc}") from None
    cleanup_errors: tuple[type[BaseException], ...] = (*_s3_errors(), StorageError, ValueError)
    try:  # the publish is done: cleaning up is best effort and never fails it
        _prune(client, bucket, prefix, keep={version, previous}, legacy_manifest=last)
    except cleanup_errors as exc:
        _log.warning("published %s but could not delete its old versions: %s", dest, exc)
    return dest


def _prune(client: Any, bucket: str, prefix: str, keep: set[str | None], legacy_manifest: str | None) -> None:
    versions_prefix = _join(prefix, VERSIONS)
    stale = [k for k in _list_keys(client, bucket, versions_prefix)
             if k[len(versions_prefix) + 1:].split("/")[0] not in keep]
    if legacy_manifest:  # a flat bundle published before pointers: its manifest first, then the files it listed
        try:
            body = client.get_object(Bucket=bucket, Key=_join(prefix, legacy_manifest))["Body"].read()
        except _s3_errors() as exc:
            if _error_code(exc) not in ("NoSuchKey", "404", "NotFound"):
                raise
        else:
            parsed = json.loads(body)
            listed = parsed.get("files") if isinstance(parsed, dict) else None
            stale += [_join(prefix, legacy_manifest)] + [
                _join(prefix, name) for name in (listed if isinstance(listed, dict) else ())
                if isinstance(name, str) and "/" not in name
                and name not in (POINTER, VERSIONS, "", ".", "..")]
    for start in range(0, len(stale), 1000):
        client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in stale[start:start + 1000]],
                                                     "Quiet": True})


def resolve(uri: str | os.PathLike[str]) -> str:
    """Where the content of ``uri`` lives now: a published pointer's version, else ``uri`` itself.

    ``s3://b/p`` with a pointer → ``s3://b/p/versions/<id>`` (immutable: pin it, e.g. as a KServe ``storageUri``,
    so every replica loads the same bundle). A local directory holding a pointer (a mirror of such a prefix) →
    its ``versions/<id>`` sub-directory.
    """
    if is_s3(uri):
        bucket, prefix = split_s3(str(uri))
        try:
            version = _read_pointer(s3_client(), bucket, prefix)
        except _s3_errors() as exc:
            raise StorageError(f"cannot read {uri}: {exc}") from None
        return str(uri) if version is None else f"{S3_PREFIX}{bucket}/{_join(prefix, f'{VERSIONS}/{version}')}"
    return str(_resolve_local(Path(uri)))


def _resolve_local(path: Path) -> Path:
    pointer = path / POINTER
    try:
        if not pointer.is_file():
            return path
        version = _pointer_version(inside(path, pointer).read_bytes(), str(pointer))
        target = path / VERSIONS / version
        if not target.is_dir():
            raise StorageError(f"publish pointer {pointer} names version {version}, but {target} is missing")
    except OSError as exc:
        raise StorageError(f"cannot read {path}: {exc}") from None
    inside(path, target)
    return target


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a local directory holding ``uri``: the path itself, or a temporary download of an s3 prefix.

    A publish pointer is followed (:func:`resolve`), so the directory is one bundle, whatever the layout.
    """
    if not is_s3(uri):
        yield local_dir(uri)
        return
    with tempfile.TemporaryDirectory(prefix="rakuten-s3-") as tmp:
        yield download_dir(resolve(uri), Path(tmp))


# ---- publishing ----------------------------------------------------------------------------------------------------

def _replaceable(target: Path, marker: str | None) -> bool:
    """An existing local target may be replaced when it is empty or holds a previous publish."""
    if not target.is_dir() or target.is_symlink():
        return False
    names = {p.name for p in target.iterdir()}
    return not names or POINTER in names or (marker is not None and marker in names)


def _refuse_replacing(target: Path, marker: str | None) -> None:
    if target.exists() and not _replaceable(target, marker):
        what = "a file" if not target.is_dir() else "a symlink" if target.is_symlink() else (
            "a directory of other files" + (f" (no {marker})" if marker else ""))
        raise StorageError(f"refusing to replace {target}: it is {what}; choose a new or empty directory, "
                           "or one that holds a previous bundle")


def publish_dir(src: Path, dest: str | os.PathLike[str], last: str | None = None) -> str:
    """Publish a finished directory to ``dest`` so readers never see a half-written copy (see the module doc).

    Local: staged beside ``dest`` and renamed into place, modes made shareable; an existing ``dest`` is replaced
    only when empty or holding ``last``/a pointer. S3: an immutable ``versions/<id>/`` copy, then the pointer.
    Returns ``dest`` (an S3 publish keeps the stable URI: :func:`resolve` gives the version).
    """
    if is_s3(dest):
        return _publish_s3(src, str(dest), last)
    target = Path(dest).resolve()
    _refuse_replacing(target, last)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc}") from None
    try:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        make_shareable(staging)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)


def check_writable(uri: str | os.PathLike[str], marker: str | None = "manifest.json") -> None:
    """Fail fast (in seconds, before any training) when ``uri`` cannot take a publish; :class:`StorageError`.

    Local: not a file, not a directory of other files (one holding ``marker``, the bundle manifest, or a pointer is
    a previous bundle and may be replaced), and its nearest existing parent accepts a new directory.
    S3: the bucket exists and is reachable, and an object can be written and deleted under the prefix.
    """
    if is_s3(uri):
        _check_s3_writable(str(uri))
        return
    target = Path(uri).expanduser().resolve()
    _refuse_replacing(target, marker)
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise StorageError(f"cannot write {target}: {parent} is not a directory")
    try:
        probe = tempfile.mkdtemp(prefix=".rakuten-write-check-", dir=parent)
        os.rmdir(probe)
    except OSError as exc:
        raise StorageError(f"cannot write {target}: {exc.strerror or exc} in {parent}") from None


def _check_s3_writable(uri: str) -> None:
    from botocore.config import Config

    bucket, prefix = split_s3(uri)
    client = s3_client(Config(connect_timeout=5, read_timeout=15, retries={"max_attempts": 2}))
    try:
        client.head_bucket(Bucket=bucket)
    except _s3_errors() as exc:
        code = _error_code(exc)
        why = (f"bucket {bucket!r} does not exist" if code in ("404", "NoSuchBucket", "NotFound") else
               f"access to bucket {bucket!r} is denied" if code in ("403", "AccessDenied", "Forbidden") else str(exc))
        raise StorageError(f"cannot write {uri}: {why}") from None
    probe = _join(prefix, f".rakuten-write-check-{uuid.uuid4().hex}")
    try:
        client.put_object(Bucket=bucket, Key=probe, Body=b"")
        client.delete_object(Bucket=bucket, Key=probe)
    except _s3_errors() as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from None


def is_regular_file(path: Path) -> bool:
    """A regular file (after following links): never a FIFO or device that would block or stream a reader."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False
