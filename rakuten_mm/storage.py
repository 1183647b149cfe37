"""Local paths and ``s3://bucket/prefix`` URIs behind one small API (boto3; ``AWS_ENDPOINT_URL`` honoured)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rakuten_mm.errors import StorageError

S3_PREFIX = "s3://"


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


def s3_client() -> Any:
    """A boto3 S3 client; boto3 itself reads ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_S3`` and credentials."""
    import boto3

    return boto3.client("s3")


def _list_keys(client: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
        keys.extend(obj["Key"] for obj in page.get("Contents", []))
    return keys


def download_dir(uri: str, dest: Path) -> Path:
    """Copy every object under ``uri`` into ``dest`` (created), keeping relative paths."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    client = s3_client()
    try:
        keys = _list_keys(client, bucket, prefix)
        if not keys:
            raise StorageError(f"nothing found under {uri}")
        for key in keys:
            rel = key[len(prefix):].lstrip("/") if prefix else key
            if not rel or rel.endswith("/"):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, key, str(target))
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot read {uri}: {exc}") from exc
    return dest


def upload_dir(src: Path, uri: str, last: str | None = None) -> None:
    """Upload every file under ``src`` to ``uri``; ``last`` (a relative name) is uploaded after all others.

    Readers treat ``last`` (the bundle manifest) as the commit marker, so a crash mid-upload leaves no
    prefix that passes verification.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    client = s3_client()
    files = sorted(p for p in src.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.relative_to(src).as_posix() == last)
    try:
        for path in files:
            rel = path.relative_to(src).as_posix()
            client.upload_file(str(path), bucket, f"{prefix}/{rel}" if prefix else rel)
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"cannot write {uri}: {exc}") from exc


@contextlib.contextmanager
def local_copy(uri: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a local directory holding ``uri``: the path itself, or a temporary download of an s3 prefix."""
    if not is_s3(uri):
        path = Path(uri)
        if not path.exists():
            raise StorageError(f"no such directory: {path}")
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="rakuten-s3-") as tmp:
        yield download_dir(str(uri), Path(tmp))


def publish_dir(src: Path, dest: str | os.PathLike[str], last: str | None = None) -> str:
    """Publish a finished directory to ``dest`` so readers never see a half-written copy.

    Local: the directory is staged beside ``dest`` and renamed into place (an existing ``dest`` is replaced only
    after the new copy is complete). S3: files are uploaded with ``last`` at the end.
    """
    if is_s3(dest):
        upload_dir(src, str(dest), last=last)
        return str(dest)
    target = Path(dest).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.staging-", dir=target.parent))
    try:
        shutil.copytree(src, staging, dirs_exist_ok=True)
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
            os.replace(target, old / "x")
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return str(target)
