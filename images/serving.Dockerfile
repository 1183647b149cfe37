# The KServe serving image: `rakuten serve predictor|transformer` (manifests/base/inferenceservice.yaml runs it with
# runAsUser 10001, a read-only root filesystem, an emptyDir at /tmp and every capability dropped). It holds only the
# runtime packages (requirements-torch.lock + requirements-runtime.lock, generated from the dev lock by
# `python -m tools.runtime_lock`), in their own layers; images/pipeline.Dockerfile is built FROM it and shares them.
#
#   make images          # both images, tagged from the package version (docker or podman)
#   docker build -f images/serving.Dockerfile -t REGISTRY/rakuten-serving:TAG .
#
# Build args:
#   PYTHON_IMAGE     the base (a python:3.11 slim image; ../shared/tools/container-engine.sh builds a stand-in offline)
#   TORCH_INDEX_URL  where torch + torchvision come from. Empty (default): PyPI, whose Linux wheels are the CUDA
#                    build (the same image serves on CPU nodes and on the gpu overlay's nodes). For a CPU-only image
#                    (no nvidia-*/triton packages): https://download.pytorch.org/whl/cpu
#   PYPI_INDEX_URL   the second index while TORCH_INDEX_URL is set, for torch's dependencies (default PyPI)
# The build context is the repository root, filtered by the allowlist in /.dockerignore.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# The project's wheel, built apart so that the runtime image holds no source tree.
FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY . .
# The locked setuptools (a build backend >= 68): no unpinned backend is fetched.
RUN grep -E '^setuptools==' requirements-torch.lock > /tmp/build.txt \
    && python -m venv /opt/build \
    && /opt/build/bin/pip install -r /tmp/build.txt \
    && /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_INDEX_URL=
ARG PYPI_INDEX_URL=https://pypi.org/simple
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLFLOW_DISABLE_TELEMETRY=true
# A fixed non-root UID/GID that matches runAsUser/runAsGroup in the manifests.
RUN groupadd --system --gid 10001 rakuten \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin rakuten \
    && python -m venv /opt/venv
# Layer 1, the largest (torch + torchvision and all they need: ≈5 GB with PyPI's CUDA libraries), changes only with
# requirements-torch.lock; used as constraints, so that from TORCH_INDEX_URL a CPU wheel (2.14.1+cpu satisfies
# ==2.14.1) brings none of the CUDA packages the lock lists for PyPI's wheel.
COPY requirements-torch.lock /opt/locks/
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        export PIP_INDEX_URL="$TORCH_INDEX_URL" PIP_EXTRA_INDEX_URL="$PYPI_INDEX_URL"; \
    fi \
    && grep -E '^torch(vision)?==' /opt/locks/requirements-torch.lock > /tmp/torch.txt \
    && pip install -r /tmp/torch.txt -c /opt/locks/requirements-torch.lock \
    && rm /tmp/torch.txt
# Layer 2: the rest of the runtime closure as locked (--no-deps: the lock is the whole closure).
COPY requirements-runtime.lock /opt/locks/
RUN pip install --no-deps -r /opt/locks/requirements-runtime.lock
# Layer 3, small: the project. The checks fail the build when the wheel lacks its entry point or its package data
# (rollout/inferenceservice.yaml is a symlink to manifests/base/inferenceservice.yaml; outside the context, the
# wheel would silently omit it).
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && rakuten --help >/dev/null \
    && python -c "import rollout.defaults as d; d.default_manifest()"
# The servers write nothing but /tmp (an emptyDir in Kubernetes; the root filesystem is read-only)
# and read the bundle from /mnt/models, where KServe's storage initializer puts it.
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["rakuten"]
CMD ["serve", "predictor", "--model_dir", "/mnt/models", "--http_port", "8080"]
