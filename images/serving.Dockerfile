# syntax=docker/dockerfile:1
# The KServe serving image: `rakuten serve predictor|transformer` (see manifests/base/inferenceservice.yaml).
# Build from the repository root:
#   docker build -f images/serving.Dockerfile -t REGISTRY/rakuten-serving:TAG .
# torch comes from requirements.lock (PyPI's CUDA-enabled Linux wheel), so the same image serves on
# CPU nodes and on the GPU overlay's nodes.
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# Dependencies first (their own layer, rebuilt only when the lock changes), then the project itself.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && rakuten --help >/dev/null

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    MPLCONFIGDIR=/tmp/matplotlib
# A fixed non-root UID/GID that matches runAsUser/runAsGroup in the manifests.
RUN groupadd --system --gid 10001 rakuten \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin rakuten
COPY --from=build /opt/venv /opt/venv
# The servers write nothing but /tmp (an emptyDir in Kubernetes; the root filesystem is read-only)
# and read the bundle from /mnt/models, where KServe's storage initializer puts it.
WORKDIR /tmp
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["rakuten"]
CMD ["serve", "predictor", "--model_dir", "/mnt/models", "--http_port", "8080", "--grpc_port", "8081"]
