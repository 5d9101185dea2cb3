"""Artifacts in an S3-compatible object store: <prefix>/<ab>/<key>/<name>, the marker last.

An object store has no rename, so a set cannot appear at once as a directory does. Instead
each set's marker (the previews' manifest.json) is written after every other file, and a
set exists once its marker does: exists() is one HEAD, and no file of a set without a
marker is ever read back. A writer first records a pending entry, <prefix>/.unfinished/<key>,
and deletes it after the marker, so the sweep finds abandoned writes by listing those few
entries, never the whole store.

The keys below the prefix are the paths below a FileStore's DATA_DIR/previews.
"""

from __future__ import annotations

import errno
import io
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from preview_worker.store.base import (
    ABANDONED_AFTER,
    KEY_PATTERN,
    StorageError,
    StoredFile,
    StoreUnreachable,
    check_key,
    check_name,
)

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

MARKER = "manifest.json"  # the file a set's writer puts last: its presence completes the set
UNFINISHED = ".unfinished"  # folder of pending entries, one per write under way
CONNECT_TIMEOUT = 3.0  # seconds to open a connection to the store
READ_TIMEOUT = 10.0  # seconds to wait for the next bytes of an answer
ATTEMPTS = 3  # tries of one request, the first included (connection errors, 5xx, throttling)
MAX_CONNECTIONS = 20  # pooled connections per process; an open stream holds one
STREAM_BUFFER = 65_536  # bytes asked of the store at a time when a file is streamed
MISSING = {"404", "NoSuchKey", "NotFound"}  # error codes of an absent object (HEAD has no body)


def client_config(
    endpoint_url: str | None,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    attempts: int = ATTEMPTS,
) -> Config:
    """Return the client's bounds; an endpoint of another vendor also gets its dialect."""
    # S3-compatible stores (MinIO, Ceph) address buckets by path, and several refuse the
    # CRC checksums that boto3 sends by default since 1.36.
    compatible = endpoint_url is not None
    checksums: Literal["when_required", "when_supported"] = (
        "when_required" if compatible else "when_supported"
    )
    return Config(
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
        max_pool_connections=MAX_CONNECTIONS,
        s3={"addressing_style": "path" if compatible else "auto"},
        request_checksum_calculation=checksums,
        response_checksum_validation=checksums,
    )


def is_missing(error: ClientError) -> bool:
    """Say whether the store answered that an object does not exist."""
    return error.response.get("Error", {}).get("Code") in MISSING


@contextmanager
def store_errors(doing: str) -> Iterator[None]:
    """Turn the client's failures into the store's: StoreUnreachable, else StorageError."""
    try:
        yield
    except (BotoConnectionError, HTTPClientError) as error:
        raise StoreUnreachable(f"cannot reach the artifact store to {doing}: {error}") from error
    except ClientError as error:
        details = error.response.get("Error", {})
        code, message = details.get("Code", "?"), details.get("Message", "")
        raise StorageError(f"the artifact store refused to {doing}: {code} {message}") from error
    except BotoCoreError as error:  # no credentials, a bad configuration
        raise StorageError(f"cannot {doing}: {error}") from error


class ObjectStream(io.RawIOBase):
    """The body of one object, read in pieces, its failures raised as the store's own."""

    def __init__(self, body: StreamingBody, where: str) -> None:
        """Read this body; where names the object in errors."""
        super().__init__()
        self.body = body
        self.where = where

    def readable(self) -> bool:
        """Say yes: a body is for reading."""
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        """Read the next bytes of the body into a buffer; return how many, 0 at the end."""
        target = memoryview(buffer).cast("B")
        with store_errors(f"read {self.where}"):
            data = self.body.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        """Give the connection back."""
        if not self.closed:
            self.body.close()
        super().close()


class S3Store:
    """Sets of files under a bucket's prefix, each complete once its marker (one of its files,
    written last) is; put refuses a set without one.
    """

    def __init__(
        self, client: S3Client, bucket: str, prefix: str = "", marker: str = MARKER
    ) -> None:
        """Keep sets in a bucket below a prefix ("" for the bucket's top), made by a client."""
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.marker = check_name(marker)
        self.root = f"{self.prefix}/" if self.prefix else ""

    @classmethod
    def from_url(
        cls,
        url: str,
        endpoint_url: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        attempts: int = ATTEMPTS,
    ) -> S3Store:
        """Return the store of an s3://bucket/prefix URL, with credentials from AWS's chain."""
        parts = urlsplit(url)
        config = client_config(endpoint_url, connect_timeout, read_timeout, attempts)
        # A session of its own: building clients from boto3's default one is not thread-safe.
        client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, config=config)
        return cls(client, parts.netloc, parts.path)

    def __repr__(self) -> str:
        """Show the bucket, the prefix and the endpoint."""
        return f"S3Store('s3://{self.bucket}/{self.prefix}', {self.client.meta.endpoint_url!r})"

    def object_key(self, key: str, name: str) -> str:
        """Return the object key of one file, refusing anything that is not a key or a name."""
        return f"{self.root}{check_key(key)[:2]}/{key}/{check_name(name)}"

    def location(self, key: str) -> str:
        """Return the s3:// URL of a key's folder."""
        return f"s3://{self.bucket}/{self.root}{check_key(key)[:2]}/{key}/"

    def exists(self, key: str) -> bool:
        """Say whether a key's marker is stored: one HEAD request."""
        return self._head(self.object_key(key, self.marker))

    def read(self, key: str, name: str) -> bytes:
        """Return one file of a complete set; FileNotFoundError when there is none."""
        stored = self.open(key, name)
        with stored.stream:
            return stored.stream.read()

    def open(self, key: str, name: str) -> StoredFile:
        """Open one file of a complete set to stream it; FileNotFoundError when there is none."""
        object_key = self.object_key(key, name)
        if name != self.marker and not self.exists(key):
            raise FileNotFoundError(errno.ENOENT, "no complete set of files", self.location(key))
        where = f"s3://{self.bucket}/{object_key}"
        with store_errors(f"read {where}"):
            try:
                answer = self.client.get_object(Bucket=self.bucket, Key=object_key)
            except ClientError as error:
                if is_missing(error):
                    raise FileNotFoundError(errno.ENOENT, "no such stored file", where) from None
                raise
        stream = io.BufferedReader(ObjectStream(answer["Body"], where), STREAM_BUFFER)
        return StoredFile(stream, answer["ContentLength"])

    def put(self, key: str, files: Mapping[str, bytes]) -> None:
        """Upload every file, then the marker; if the marker is there already, keep that set."""
        names = [check_name(name) for name in files]
        if self.marker not in names:
            raise ValueError(f"a set in an object store needs its marker, {self.marker}")
        if self.exists(key):
            return
        pending = self._pending_key(key)
        self._put_object(pending, b"")
        # Nothing of a failed write is cleaned up here: a writer of the same key may be
        # running at once, and its files are these. The sweep finds the pending entry.
        for name in [*(name for name in names if name != self.marker), self.marker]:
            self._put_object(self.object_key(key, name), files[name])
        try:
            self._delete_object(pending)
        except StorageError:
            pass  # the set is complete; the sweep removes the entry

    def remove_abandoned(self, older_than: float = ABANDONED_AFTER) -> int:
        """Remove the files of writes that stopped before their marker; return how many sets.

        A set is removed only when its pending entry and each of its files are older than
        older_than seconds: a writer that starts the same key again rewrites both.
        """
        cutoff = datetime.fromtimestamp(time.time() - older_than, timezone.utc)
        removed = 0
        for entry, modified in self._list(f"{self.root}{UNFINISHED}/"):
            key = entry.rpartition("/")[2]
            if modified >= cutoff or not KEY_PATTERN.fullmatch(key):
                continue
            if not self.exists(key):
                folder = self.object_key(key, self.marker).rpartition("/")[0] + "/"
                for stale, written in self._list(folder):
                    if written < cutoff:
                        self._delete_object(stale)
                removed += 1
            self._delete_object(entry)
        return removed

    def check(self) -> None:
        """Ask whether the bucket is there and ours to use: one HEAD request."""
        with store_errors(f"look up the bucket {self.bucket}"):
            self.client.head_bucket(Bucket=self.bucket)

    def _pending_key(self, key: str) -> str:
        """Return the object key of a key's pending entry."""
        return f"{self.root}{UNFINISHED}/{check_key(key)}"

    def _head(self, object_key: str) -> bool:
        """Say whether an object exists."""
        with store_errors(f"look up s3://{self.bucket}/{object_key}"):
            try:
                self.client.head_object(Bucket=self.bucket, Key=object_key)
            except ClientError as error:
                if is_missing(error):
                    return False
                raise
        return True

    def _put_object(self, object_key: str, data: bytes) -> None:
        """Upload one object whole."""
        with store_errors(f"write s3://{self.bucket}/{object_key}"):
            self.client.put_object(Bucket=self.bucket, Key=object_key, Body=data)

    def _delete_object(self, object_key: str) -> None:
        """Delete one object (one request each: batch deletes need checksums some stores lack)."""
        with store_errors(f"delete s3://{self.bucket}/{object_key}"):
            self.client.delete_object(Bucket=self.bucket, Key=object_key)

    def _list(self, folder: str) -> Iterator[tuple[str, datetime]]:
        """List the objects below a folder, a page at a time: each key and when it was written."""
        with store_errors(f"list s3://{self.bucket}/{folder}"):
            pages = self.client.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=folder):
                for item in page.get("Contents", []):
                    if "Key" in item and "LastModified" in item:
                        yield item["Key"], item["LastModified"]
