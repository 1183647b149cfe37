"""Start the predictor and the transformer as local processes on loopback ports (demo, benchmarks, tests).

Development tooling, not part of the serving image. Each server is ``python -m rakuten_cli serve ...`` bound to
127.0.0.1 on a free port, logging to a file; they are stopped by PID (SIGTERM, then SIGKILL after a grace period).
Nothing here runs at import time.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    role: str
    port: int
    args: list[str]
    log_path: Path
    model_name: str = "rakuten"
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ServerProcess:
        env = dict(os.environ)
        # The editable install may predate some packages: make them importable from the checkout.
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
        cmd = [sys.executable, "-m", "rakuten_cli", "serve", self.role, "--http_port", str(self.port),
               "--bind_host", HOST, "--model_name", self.model_name, *self.args]
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env)
        return self

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 120.0, path: str | None = None) -> None:
        """Poll ``path`` (default: the model's readiness; ``/v2/health/live`` for "listening") until it is 200."""
        deadline = time.monotonic() + timeout
        url = self.url + (path or f"/v2/models/{self.model_name}/ready")
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the {self.role} exited with code {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(url, timeout=2.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise TimeoutError(f"the {self.role} did not answer 200 on {url} after {timeout:.0f} s:\n{self.log_tail()}")

    def terminate(self) -> None:
        """Send SIGTERM (the server shuts down gracefully); :meth:`stop` waits for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def stop(self, grace: float = 15.0) -> None:
        proc, self.process = self.process, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@dataclass
class LocalServers:
    """Predictor + transformer for one bundle (the transformer needs none); use as a context manager."""

    bundle: str | Path
    predictor_args: list[str] = field(default_factory=list)
    transformer_args: list[str] = field(default_factory=list)
    log_dir: Path | None = None
    model_name: str = "rakuten"
    predictor: ServerProcess | None = None
    transformer: ServerProcess | None = None

    def start(self, timeout: float = 120.0) -> LocalServers:
        log_dir = self.log_dir or Path(tempfile.mkdtemp(prefix="rakuten-serve-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        pred_port, trans_port = free_port(), free_port()
        while trans_port == pred_port:
            trans_port = free_port()
        self.predictor = ServerProcess("predictor", pred_port,
                                       ["--model_dir", str(self.bundle), *self.predictor_args],
                                       log_dir / "predictor.log", self.model_name)
        self.transformer = ServerProcess("transformer", trans_port,
                                         ["--predictor_host", f"{HOST}:{pred_port}", *self.transformer_args],
                                         log_dir / "transformer.log", self.model_name)
        try:
            self.predictor.start()
            self.transformer.start()
            self.predictor.wait_ready(timeout)
            self.transformer.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        servers = [s for s in (self.transformer, self.predictor) if s is not None]
        for server in servers:  # signal both first: their shutdowns overlap
            server.terminate()
        for server in servers:
            server.stop()

    def __enter__(self) -> LocalServers:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
