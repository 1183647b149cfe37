"""A real moto_server on a free loopback port for the S3 benchmarks, started as a process and stopped by its PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from devtools.local_servers import free_port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start moto_server and wait until it listens; return the process and its endpoint URL."""
    port = free_port()
    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with {proc.returncode}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return proc, f"http://127.0.0.1:{port}"
        time.sleep(0.1)
    stop(proc)
    raise TimeoutError("moto_server did not start")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate the process, killing it if it has not exited after 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
