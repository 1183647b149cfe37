"""``rakuten pipeline run --runner docker``: every step in the pipeline image, through ``kfp.local.DockerRunner``.

What the steps then run is the exact image Kubeflow will run (its packages, its non-root user 10001), against any
Docker Engine API: Docker, or podman's (``podman system service --time=0 unix:///PATH/podman.sock &`` and
``DOCKER_HOST=unix:///PATH/podman.sock``). kfp mounts the pipeline root (at the same path) and the workspace; this
module plans the rest (:func:`plan`, pure) and prepares the host (:func:`prepare`):

- Read-only: the data directory, at the same path (the steps get the host paths as parameters).
- Read-write: the state directory (``RAKUTEN_STATE_DIR``, passed on): MLflow's sqlite store *and its artifacts*
  (``mlartifacts/``) and the pipeline root, so runs, registry and artifacts stay on the host and are shared with
  subprocess runs. An MLflow server (``--tracking-uri http://...`` or ``MLFLOW_TRACKING_URI``) works too; a local
  store outside the state directory does not (its artifacts would stay in the container): a ConfigError says so.
- The bundle: the register step publishes into the parent of ``--out`` (staged beside it, then renamed). That
  parent is not mounted (it may be a home directory); an empty scratch directory is mounted in its place, and the
  finished bundle is published from there to ``--out`` on the host afterwards. MLflow records ``--out`` itself.
  ``--out`` inside the state directory is written directly. S3 URIs need no mount.
- Permissions, without running the image as another user: containers run as the image's user with the host
  user's group added and umask 0002, and the directories they write get the group's write bit and setgid. So
  the steps can write, and what they write (owned by uid 10001) stays writable for the host user through the group.
  MLflow's sqlite file is created on the host first (sqlite makes its files 0644 whatever the umask).
- Environment: the credentials the cluster reads from the Secret (``AWS_*``, ``MLFLOW_TRACKING_*``) are passed
  from the host's environment when set; the containers use the host's network, so a local S3 (MinIO, moto) or
  MLflow server on 127.0.0.1 is reachable as on the host.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pipelines.cluster import OPTIONAL_SECRET_KEYS, REQUIRED_SECRET_KEYS
from rakuten_mm import errors, storage

# Passed from the host when set: what the cluster's Secret provides, plus temporary AWS credentials.
FORWARDED_ENV = (*REQUIRED_SECRET_KEYS, *OPTIONAL_SECRET_KEYS, "AWS_SESSION_TOKEN", "AWS_REGION")
UMASK = "0002"
# The image's entry point is empty; this one sets the umask and runs the step's command (kfp's `sh -c ...`).
ENTRYPOINT = ["/bin/sh", "-c", f'umask {UMASK} && exec "$@"', "step"]
PODMAN_SOCKETS = ("/run/podman/podman.sock",)


@dataclass(frozen=True)
class Mount:
    source: Path
    target: Path
    read_only: bool


@dataclass(frozen=True)
class DockerPlan:
    """What a docker run mounts, passes and must prepare on the host."""

    mounts: tuple[Mount, ...]
    environment: dict[str, str]
    writable: tuple[Path, ...]  # host directories the containers write: made group-writable (recursively)
    staged_out: Path | None = None  # the scratch directory mounted at --out's parent, when staged
    out: Path | None = None  # the local --out
    sqlite_store: Path | None = None  # MLflow's sqlite file in the state dir: created here, so the host user owns it


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def local_tracking_path(uri: str) -> Path | None:
    """The file a local MLflow tracking URI (``sqlite:///``, ``file:``, a plain path) points at; None for servers."""
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https", "databricks", "databricks-uc", "uc"):
        return None
    if parsed.scheme == "sqlite":
        return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if parsed.scheme == "file":
        return Path(parsed.path)
    if parsed.scheme == "":
        return Path(uri).expanduser().resolve()
    return None


def plan(data_uri: str, out_uri: str, state: Path, scratch: Path, tracking_uri: str | None,
         environ: Mapping[str, str]) -> DockerPlan:
    """The mounts and environment of a docker run (no side effects). Paths are absolute (run_local resolves them)."""
    for uri in (tracking_uri, environ.get("MLFLOW_TRACKING_URI")):
        local = local_tracking_path(uri) if uri else None
        if local is not None and not _inside(local, state):
            raise errors.ConfigError(
                f"--runner docker keeps a local MLflow store only in the state directory {state} (its artifacts "
                f"would otherwise stay in the containers), got {uri!r}: set RAKUTEN_STATE_DIR to its directory, or "
                "use an MLflow server (mlflow server ...; --tracking-uri http://HOST:PORT)")
    effective = tracking_uri or environ.get("MLFLOW_TRACKING_URI")
    sqlite_store = (state / "mlflow.db" if not effective else
                    local_tracking_path(effective) if effective.startswith("sqlite:///") else None)
    mounts = [Mount(state, state, read_only=False)]
    writable = [state]
    if not storage.is_s3(data_uri):
        data = Path(data_uri)
        if not _inside(data, state):
            mounts.append(Mount(data, data, read_only=True))
    staged = out = None
    if not storage.is_s3(out_uri):
        out = Path(out_uri)
        if not _inside(out.parent, state):
            if not storage.is_s3(data_uri) and _inside(out.parent, Path(data_uri)):
                raise errors.ConfigError(f"--runner docker mounts the data read-only: --out {out} cannot be inside "
                                         f"{data_uri}")
            staged = scratch / "out"
            mounts.append(Mount(staged, out.parent, read_only=False))
            writable.append(staged)
    env = {"RAKUTEN_STATE_DIR": str(state), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.update({k: environ[k] for k in FORWARDED_ENV if environ.get(k)})
    return DockerPlan(tuple(mounts), env, tuple(writable), staged, out, sqlite_store)


def runner_arguments(p: DockerPlan, gid: int) -> dict[str, Any]:
    """Keyword arguments of ``kfp.local.DockerRunner`` (``docker`` SDK ``containers.run`` arguments) for ``p``."""
    from docker.types import Mount as DockerMount

    # Parents first: a mount inside another one (data inside the staged out's parent...) goes on top of it.
    mounts = [DockerMount(str(m.target), str(m.source), type="bind", read_only=m.read_only)
              for m in sorted(p.mounts, key=lambda m: len(m.target.parts))]
    return {"mounts": mounts, "environment": dict(p.environment), "network_mode": "host",
            "group_add": [str(gid)], "entrypoint": list(ENTRYPOINT)}


def grant_group_write(roots: Iterable[Path]) -> None:
    """Directories under ``roots``: group rwx + setgid (new files keep the group); files: group rw. Entries this
    user does not own (and cannot change) are left as they are."""
    for root in roots:
        if not root.exists():
            continue
        entries = [root] if root.is_file() else [root, *root.rglob("*")]
        for path in entries:
            if path.is_symlink():
                continue
            try:
                mode = path.stat().st_mode
                extra = (stat.S_IRWXG | stat.S_ISGID) if stat.S_ISDIR(mode) else (stat.S_IRGRP | stat.S_IWGRP)
                if mode & extra != extra:
                    os.chmod(path, stat.S_IMODE(mode) | extra)
            except PermissionError:
                continue


def prepare(p: DockerPlan) -> None:
    """Create the staged directory and make what the containers write writable for them (see the module doc)."""
    if p.out is not None:
        storage.check_writable(p.out)  # fail now, not after training, when --out cannot take the bundle
    if p.staged_out is not None:
        p.staged_out.mkdir(parents=True, exist_ok=True)
    if p.sqlite_store is not None:
        # sqlite creates its file 0644 whatever the umask: one made in a container would stay read-only for the
        # host user. An empty file is an empty database.
        p.sqlite_store.parent.mkdir(parents=True, exist_ok=True)
        p.sqlite_store.touch(exist_ok=True)
    grant_group_write(p.writable)


def finish(p: DockerPlan) -> None:
    """Publish the bundle the containers wrote into the staged directory to ``--out`` (on the host)."""
    if p.staged_out is None or p.out is None:
        return
    written = p.staged_out / p.out.name
    if written.is_dir():
        storage.publish_dir(written, p.out, last="manifest.json")


def docker_client() -> Any:
    """A Docker API client (``DOCKER_HOST``, else the default socket, else podman's rootful socket); ConfigError with
    what to do when none answers."""
    try:
        import docker
    except ImportError:
        raise errors.ConfigError("--runner docker needs the docker package (pip install docker; it is in "
                                 "requirements.lock)") from None
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        for sock in PODMAN_SOCKETS:
            if Path(sock).exists():
                os.environ["DOCKER_HOST"] = f"unix://{sock}"
                break
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # the SDK raises DockerException, requests and socket errors alike
        where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        raise errors.ConfigError(
            f"--runner docker: no Docker API at {where} ({type(exc).__name__}). Start Docker, or podman's API "
            "(podman system service --time=0 unix:///tmp/podman.sock &) and set "
            "DOCKER_HOST=unix:///tmp/podman.sock") from None
    return client


def check_image(client: Any, image: str) -> None:
    """The image must be here (``make images``) or pullable; say which before any step starts."""
    import docker

    ref = image if ":" in image.rsplit("/", 1)[-1] or "@" in image else f"{image}:latest"
    try:
        client.images.get(ref)
    except docker.errors.ImageNotFound:
        try:
            client.images.pull(ref)
        except docker.errors.APIError as exc:
            raise errors.ConfigError(f"--runner docker: image {ref} is neither here nor pullable ({exc}); build it "
                                     "with `make images` or pass --image REF") from None
