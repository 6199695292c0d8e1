"""HTTP(S) downloads that resume, retry, time out, show progress and verify before anyone trusts them.

A download goes to ``DEST.part`` first. An interrupted transfer keeps that partial file and the next
attempt asks the server for the rest (``Range: bytes=N-``); a server that ignores ranges answers
200 and the transfer restarts from zero. Only a file whose size and checksums match is renamed onto
``DEST``; a mismatching file is deleted, never kept for a later resume.

The hashes (sha256 always, md5 when one is expected) are computed while the bytes arrive, each in
a thread of its own, so a verified download costs a single pass over the data and hashing overlaps
with the transfer. The finished file is renamed without an fsync: a download is a cache that is
verified again (registry checksum or pin) every time it is reused, and flushing a multi-GB archive
cost about a third of the loopback transfer time (benchmarks/bench_download.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import queue
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mmc import __version__
from mmc.errors import MMCError

DEFAULT_RETRIES = 5
DEFAULT_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
DEFAULT_TIMEOUT_S = 60.0
CHUNK_SIZE = 1 << 20
# Statuses worth asking again for; any other 4xx is the request's fault and will not change.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class Download:
    path: Path
    size: int
    sha256: str
    md5: str | None
    attempts: int  # HTTP requests made (0 when DEST was already there and verified)
    resumed_at: tuple[int, ...]  # offsets at which a partial file was continued


class _Retry(Exception):
    """A transient failure: keep the partial file and ask again after a pause."""


class _Hashes:
    """sha256 (and md5) of the bytes received, each computed in a thread of its own.

    hashlib releases the GIL on large updates, so hashing overlaps with receiving and writing
    instead of adding to it. Chunks are immutable ``bytes``; queues are bounded (memory stays a
    few MiB). Call :meth:`hexdigests` to wait for the queued chunks, :meth:`close` at the end.
    """

    QUEUE_CHUNKS = 8

    def __init__(self, want_md5: bool):
        self.want_md5 = want_md5
        self._queues = [queue.Queue(self.QUEUE_CHUNKS) for _ in range(2 if want_md5 else 1)]
        self._threads = [threading.Thread(target=self._work, args=(q,), daemon=True) for q in self._queues]
        for thread in self._threads:
            thread.start()
        self.reset()

    @staticmethod
    def _work(q: queue.Queue) -> None:
        while (item := q.get()) is not None:
            hasher, data = item
            hasher.update(data)
            q.task_done()
        q.task_done()

    def reset(self) -> None:
        self.count = 0  # bytes handed over so far
        self._hashers = [hashlib.sha256()] + ([hashlib.md5(usedforsecurity=False)] if self.want_md5 else [])

    def update(self, data: bytes) -> None:
        self.count += len(data)
        for q, hasher in zip(self._queues, self._hashers, strict=True):
            q.put((hasher, data))

    def hexdigests(self) -> tuple[str, str | None]:
        for q in self._queues:
            q.join()
        return self._hashers[0].hexdigest(), self._hashers[1].hexdigest() if self.want_md5 else None

    def close(self) -> None:
        for q in self._queues:
            q.put(None)
        for thread in self._threads:
            thread.join()

    def update_from_file(self, path: Path, length: int) -> None:
        if length <= 0:
            return
        with open(path, "rb") as f:
            while length > 0 and (chunk := f.read(min(CHUNK_SIZE, length))):
                self.update(chunk)
                length -= len(chunk)


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    size: int | None = None,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = DEFAULT_BACKOFF_S,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: bool | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Download:
    """Download ``url`` to ``dest`` and verify it; raise :class:`MMCError` with the reason if it fails.

    ``progress=None`` shows a bar on a terminal (stderr) and a line now and then in a log
    (:mod:`mmc.progress`); True forces the bar, False shows nothing. ``retries`` counts extra attempts
    after the first; the pause doubles from ``backoff_s`` (capped at a minute).
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        done = _verify_existing(dest, size=size, sha256=sha256, md5=md5)
        if done is not None:
            return done
        dest.unlink()  # an earlier file that no longer matches the registry: fetch it again
    part = dest.with_name(dest.name + ".part")
    hashes = _Hashes(want_md5=md5 is not None)
    try:
        return _download(url, dest, part, size, sha256, md5, hashes, retries, backoff_s, timeout_s, progress, sleep)
    finally:
        hashes.close()


def _download(url, dest, part, size, sha256, md5, hashes: _Hashes, retries, backoff_s, timeout_s, progress, sleep) -> Download:
    resumed_at: list[int] = []
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            sleep(min(backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S))
        offset = part.stat().st_size if part.exists() else 0
        if size is not None and offset > size:
            offset = _truncate(part)
        if hashes.count != offset:  # a partial file left by an earlier run: hash what is there
            hashes.reset()
            hashes.update_from_file(part, offset)
        try:
            _attempt(url, part, offset, size, hashes, timeout_s, progress, resumed_at)
            break
        except _Retry as e:
            last_error = str(e)
    else:
        kept = f" (partial file kept for a later resume: {part})" if part.exists() else ""
        raise MMCError(f"{url}: download failed after {retries + 1} attempts: {last_error}{kept}")
    return _finish(url, dest, part, size, sha256, md5, hashes, attempts=attempt + 1, resumed_at=tuple(resumed_at))


def _attempt(url, part: Path, offset: int, size, hashes: _Hashes, timeout_s, progress, resumed_at) -> int:
    """One HTTP request; returns the number of bytes now in ``part`` (all of them) or raises _Retry."""
    if size is not None and offset == size and offset > 0:
        return offset  # the previous attempt got every byte; only verification is left
    headers = {"User-Agent": f"mmc-repro/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:  # our partial file is as long as (or longer than) the resource
            total = _total_from_content_range(e.headers.get("Content-Range"))
            if total == offset:
                return offset
            _truncate(part)
            raise _Retry(f"HTTP 416 for a range starting at {offset}: restarting from zero") from None
        if e.code in RETRYABLE_STATUS:
            raise _Retry(f"HTTP {e.code} {e.reason}") from None
        raise MMCError(f"{url}: HTTP {e.code} {e.reason} (not retried: the server refuses this request)") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retry(_describe_network_error(e)) from None
    with response:
        status = getattr(response, "status", None) or 200  # file:// responses carry no status
        if status == 206:
            start, total = _parse_content_range(url, response.headers.get("Content-Range"))
            if start != offset:
                _truncate(part)
                raise _Retry(f"server resumed at byte {start}, not {offset}: restarting from zero")
            resumed_at.append(offset)
            mode = "ab"
        else:
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None and length.isdigit() else None
            if offset:
                hashes.reset()  # the server ignored our Range: it sends the whole file again
            offset, mode = 0, "wb"
        if size is not None and total is not None and total != size:
            part.unlink(missing_ok=True)
            raise MMCError(f"{url}: the server offers {total} bytes, the registry expects {size}; nothing kept")
        return _stream(url, response, part, mode, offset, total, hashes, progress)


def _stream(url, response, part: Path, mode: str, offset: int, total, hashes: _Hashes, progress) -> int:
    from mmc.progress import Progress

    buffer = bytearray(CHUNK_SIZE)
    view = memoryview(buffer)
    received = offset
    # a bar on a terminal, a line now and then in a log (mmc.progress); --progress/--no-progress win
    bar = Progress(total, part.name.removesuffix(".part"), unit="B", mode=progress, initial=offset)
    try:
        with open(part, mode) as out:
            while True:
                try:
                    n = response.readinto(view)
                except (OSError, http.client.HTTPException) as e:
                    raise _Retry(f"transfer interrupted at byte {received}: {_describe_network_error(e)}") from None
                if not n:
                    break
                chunk = bytes(view[:n])  # the hash threads keep it while the buffer is reused
                try:
                    out.write(chunk)
                except OSError as e:
                    _flush_quietly(out)
                    part.unlink(missing_ok=True)
                    raise MMCError(f"{part}: cannot write the download ({e.strerror or e}); nothing kept") from None
                hashes.update(chunk)
                received += n
                bar.update(n)
            try:
                out.flush()
            except OSError as e:
                part.unlink(missing_ok=True)
                raise MMCError(f"{part}: cannot write the download ({e.strerror or e}); nothing kept") from None
    finally:
        bar.close()
    if total is not None and received < total:
        raise _Retry(f"truncated transfer: got {received} of {total} bytes")
    return received


def _flush_quietly(f) -> None:
    with contextlib.suppress(OSError):
        f.flush()


def _finish(url, dest: Path, part: Path, size, sha256, md5, hashes: _Hashes, *, attempts, resumed_at) -> Download:
    actual = part.stat().st_size
    problems = []
    if size is not None and actual != size:
        problems.append(f"size {actual} bytes, expected {size}")
    got_sha, got_md5 = hashes.hexdigests()
    if sha256 is not None and got_sha != sha256:
        problems.append(f"sha256 {got_sha}, expected {sha256}")
    if md5 is not None and got_md5 != md5:
        problems.append(f"md5 {got_md5}, expected {md5}")
    if problems:
        part.unlink(missing_ok=True)
        raise MMCError(f"{url}: checksum mismatch ({'; '.join(problems)}); the download was deleted")
    os.replace(part, dest)
    return Download(dest, actual, got_sha, got_md5, attempts, resumed_at)


def _verify_existing(dest: Path, *, size, sha256, md5) -> Download | None:
    if sha256 is None and md5 is None:
        return None  # no checksum to check it against: only a fresh download can be trusted
    if size is not None and dest.stat().st_size != size:
        return None
    hashes = _Hashes(want_md5=md5 is not None)
    try:
        hashes.update_from_file(dest, dest.stat().st_size)
        got_sha, got_md5 = hashes.hexdigests()
    finally:
        hashes.close()
    if (sha256 is not None and got_sha != sha256) or (md5 is not None and got_md5 != md5):
        return None
    return Download(dest, dest.stat().st_size, got_sha, got_md5, 0, ())


def _truncate(part: Path) -> int:
    part.unlink(missing_ok=True)
    return 0


def _parse_content_range(url: str, value: str | None) -> tuple[int, int | None]:
    match = _CONTENT_RANGE.fullmatch((value or "").strip())
    if match is None:
        raise MMCError(f"{url}: HTTP 206 with an unreadable Content-Range header {value!r}")
    total = match.group(3)
    return int(match.group(1)), None if total == "*" else int(total)


def _total_from_content_range(value: str | None) -> int | None:
    match = re.fullmatch(r"bytes \*/(\d+)", (value or "").strip())
    return int(match.group(1)) if match else None


def _describe_network_error(e: BaseException) -> str:
    reason = getattr(e, "reason", None)
    if isinstance(e, urllib.error.URLError) and reason is not None:
        e = reason if isinstance(reason, BaseException) else e
        if not isinstance(reason, BaseException):
            return str(reason)
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(e, http.client.IncompleteRead):
        return f"connection closed early ({len(e.partial)} bytes in the last read)"
    return f"{type(e).__name__}: {e}"
