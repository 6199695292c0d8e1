"""A real HTTP server on 127.0.0.1 (stdlib, one thread per request) for download tests and benchmarks.

It serves named files (bytes or paths on disk, the latter with ``os.sendfile``), honours
``Range: bytes=N-`` unless told not to, records every request it receives, and can misbehave on
purpose: fail with a status a number of times, drop the connection half-way, always truncate, or
announce and send a shorter file than it has.
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass
class Behaviour:
    ignore_range: bool = False
    fail_status: int | None = None  # answer this status ...
    fail_times: int = 0  # ... to this many requests (then serve normally); -1 = always
    drop_first_at: float | None = None  # first request of a path: close after this fraction of bytes
    always_truncate_at: float | None = None  # every response: close after this fraction of its bytes
    stall_s: float = 0.0  # wait this long after the headers before sending the body
    short_content_length: int | None = None  # announce and send only this many bytes, as if that were all


@dataclass
class Served:
    path: str
    range: str | None
    status: int


@dataclass
class LoopbackServer:
    files: dict[str, bytes | Path]
    behaviour: Behaviour = field(default_factory=Behaviour)
    requests: list[Served] = field(default_factory=list)

    def __enter__(self) -> LoopbackServer:
        owner = self

        class Handler(_Handler):
            server_owner = owner

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


class _Handler(BaseHTTPRequestHandler):
    server_owner: LoopbackServer

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        owner = self.server_owner
        b = owner.behaviour
        name = self.path.lstrip("/")
        range_header = self.headers.get("Range")
        if b.fail_status is not None and b.fail_times != 0:
            b.fail_times -= 1 if b.fail_times > 0 else 0
            owner.requests.append(Served(name, range_header, b.fail_status))
            self.send_error(b.fail_status)
            return
        if name not in owner.files:
            owner.requests.append(Served(name, range_header, 404))
            self.send_error(404)
            return
        source = owner.files[name]
        total = source.stat().st_size if isinstance(source, Path) else len(source)
        if b.short_content_length is not None:  # a lying server: a shorter file, consistently
            total = min(total, b.short_content_length)
        first_of_path = not any(r.path == name for r in owner.requests)
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if match and not b.ignore_range:
            start = int(match.group(1))
            if start >= total:
                owner.requests.append(Served(name, range_header, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{total}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        else:
            status = 200
        owner.requests.append(Served(name, range_header, status))
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(total - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        self.send_header("Accept-Ranges", "none" if b.ignore_range else "bytes")
        self.end_headers()
        if b.stall_s:
            self.wfile.flush()
            time.sleep(b.stall_s)
        end = total
        if b.drop_first_at is not None and first_of_path:
            end = start + int((total - start) * b.drop_first_at)
        if b.always_truncate_at is not None:
            end = start + int((total - start) * b.always_truncate_at)
        self._send_body(source, start, end)
        self.close_connection = True

    def _send_body(self, source: bytes | Path, start: int, end: int) -> None:
        try:
            if isinstance(source, Path):
                self.wfile.flush()
                with open(source, "rb") as f:
                    offset = start
                    while offset < end:
                        sent = os.sendfile(self.connection.fileno(), f.fileno(), offset, min(end - offset, 1 << 24))
                        if sent == 0:
                            break
                        offset += sent
            else:
                self.wfile.write(source[start:end])
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
