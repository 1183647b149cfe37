"""A loopback HTTP proxy in front of ``moto_server`` that adds latency and injects faults (benchmarks, tests).

``moto_server`` answers in a few milliseconds; a real object store takes 10–20 ms to the first byte. This proxy
delays every request by ``--latency-ms`` before forwarding it, so a benchmark of serial vs concurrent transfers
measures what concurrency buys against a real store. ``--fail`` and ``--truncate`` make chosen requests fail the
way a real store sometimes does (a 5xx answer; a body that breaks off), so tests exercise the retry paths over real
HTTP. ``--log`` records every request (``METHOD PATH STATUS IN_FLIGHT``: the last field is how many requests the
proxy held when this one arrived, itself included), so a test can count what was read and see requests overlap.

    python -m devtools.s3_proxy --upstream 127.0.0.1:5000 --port 5001 [--latency-ms 20]
        [--fail STATUS:COUNT:REGEX] [--truncate COUNT:REGEX] [--log FILE]

``REGEX`` is searched in ``"METHOD PATH"`` (path with query string); ``COUNT`` is how many matching requests get the
fault (``-1``: all of them). A faulted request is not forwarded. Each client connection is handled by its own
thread with its own upstream connection (keep-alive on both sides). Nothing happens at import time; run it as a
process and stop it by PID (:func:`start`, :meth:`ProxyProcess.stop`).
"""

from __future__ import annotations

import argparse
import http.client
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
              "expect", "content-length"}
ERROR_CODES = {403: "AccessDenied", 404: "NoSuchKey", 500: "InternalError", 503: "ServiceUnavailable",
               429: "SlowDown"}


@dataclass
class Rule:
    pattern: re.Pattern[str]
    remaining: int  # -1: unlimited
    status: int = 0  # 0: truncate the body instead

    def take(self, line: str) -> bool:
        if self.remaining == 0 or not self.pattern.search(line):
            return False
        if self.remaining > 0:
            self.remaining -= 1
        return True


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 512

    def __init__(self, port: int, upstream: tuple[str, int], latency: float, rules: list[Rule],
                 log: Path | None) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.upstream, self.latency, self.rules = upstream, latency, rules
        self.lock = threading.Lock()
        self.in_flight = 0
        self.log = log.open("a", buffering=1) if log else None

    def fault(self, line: str) -> Rule | None:
        with self.lock:
            return next((rule for rule in self.rules if rule.take(line)), None)

    def record(self, line: str, status: int | str, in_flight: int) -> None:
        if self.log:
            with self.lock:
                self.log.write(f"{line} {status} {in_flight}\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes: Nagle + delayed ACK would add ~40 ms
    server: ProxyServer
    _conn: http.client.HTTPConnection | None = None
    _in_flight = 0

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass

    def _upstream(self, fresh: bool = False) -> http.client.HTTPConnection:
        if fresh or self._conn is None:
            if self._conn is not None:
                self._conn.close()
            self._conn = http.client.HTTPConnection(*self.server.upstream, timeout=120)
        return self._conn

    def _relay(self) -> None:
        with self.server.lock:
            self.server.in_flight += 1
            self._in_flight = self.server.in_flight
        try:
            self._forward()
        finally:
            with self.server.lock:
                self.server.in_flight -= 1

    def _forward(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        line = f"{self.command} {self.path}"
        if self.server.latency:
            time.sleep(self.server.latency)
        rule = self.server.fault(line)
        if rule is not None and rule.status:
            self.server.record(line, rule.status, self._in_flight)
            code = ERROR_CODES.get(rule.status, str(rule.status))
            data = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>injected by devtools.s3_proxy</Message></Error>").encode()
            self.send_response_only(rule.status)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
        for attempt in (0, 1):  # a keep-alive upstream connection the server closed: reconnect once
            try:
                conn = self._upstream(fresh=attempt == 1)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (OSError, http.client.HTTPException):
                if attempt == 1:
                    raise
        self.server.record(line, resp.status if rule is None else "truncated", self._in_flight)
        self.send_response_only(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in HOP_BY_HOP:
                self.send_header(key, value)
        self.send_header("Content-Length", resp.getheader("Content-Length", "0") if self.command == "HEAD"
                         else str(len(data)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if rule is not None:  # truncate: half the promised body, then drop the connection
            self.wfile.write(data[:len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay  # noqa: N815 - http.server's naming


def _parse_rule(text: str, truncate: bool) -> Rule:
    parts = text.split(":", 1 if truncate else 2)
    if truncate:
        return Rule(re.compile(parts[1]), int(parts[0]))
    return Rule(re.compile(parts[2]), int(parts[1]), int(parts[0]))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the S3 server")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--fail", action="append", default=[], metavar="STATUS:COUNT:REGEX")
    parser.add_argument("--truncate", action="append", default=[], metavar="COUNT:REGEX")
    parser.add_argument("--log", type=Path)
    args = parser.parse_args(argv)
    host, _, port = args.upstream.rpartition(":")
    rules = [_parse_rule(r, False) for r in args.fail] + [_parse_rule(r, True) for r in args.truncate]
    server = ProxyServer(args.port, (host, int(port)), args.latency_ms / 1000, rules, args.log)
    server.serve_forever()


@dataclass
class ProxyProcess:
    """A running proxy: ``endpoint`` is what ``AWS_ENDPOINT_URL`` should point at."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def __enter__(self) -> ProxyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start(upstream: str, *extra: str, timeout: float = 30.0) -> ProxyProcess:
    """Start the proxy as a process on a free loopback port in front of ``upstream`` (``http://host:port`` or
    ``host:port``) and wait until it listens; ``extra``: more command-line options (``--latency-ms``, ``--fail``...).
    """
    import socket

    from devtools.local_servers import free_port

    port = free_port()
    target = upstream.split("://", 1)[-1].rstrip("/")
    proc = subprocess.Popen([sys.executable, "-m", "devtools.s3_proxy", "--upstream", target, "--port", str(port),
                             *extra], cwd=REPO_ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"s3 proxy exited with {proc.returncode} before listening on {port}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return ProxyProcess(proc, port)
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"s3 proxy not listening on 127.0.0.1:{port} after {timeout}s")


if __name__ == "__main__":
    main()
