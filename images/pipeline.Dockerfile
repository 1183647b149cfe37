# syntax=docker/dockerfile:1
# The Kubeflow Pipelines image: every component of pipelines/ runs in it (kfp, torch with CUDA,
# the project), with torchvision's ImageNet VGG16 weights baked in so training runs offline.
# Build from the repository root:
#   docker build -f images/pipeline.Dockerfile -t REGISTRY/rakuten-pipeline:TAG .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TORCH_HOME=/opt/torch
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# torch + torchvision first: the largest layer (PyPI's Linux wheels bundle CUDA), cached across
# lock changes. requirements.lock pins the same versions, so the next step keeps them.
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . \
    && rakuten --help >/dev/null
# ImageNet weights for `--image-weights imagenet`, read from $TORCH_HOME/hub/checkpoints at run time.
RUN python -c "import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')" \
    && chmod -R a+rX /opt/torch

FROM ${PYTHON_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TORCH_HOME=/opt/torch \
    HOME=/home/rakuten \
    MPLCONFIGDIR=/tmp/matplotlib \
    MLFLOW_DISABLE_TELEMETRY=true
# Non-root. The KFP v2 launcher writes artifacts below /gcs, /minio and /s3 (and pip/HF caches
# below $HOME): create them writable for the runtime user (kubeflow/pipelines#10397, #10538).
RUN groupadd --system --gid 10001 rakuten \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/rakuten --create-home --shell /usr/sbin/nologin rakuten \
    && mkdir -p /gcs /minio /s3 /oci \
    && chown 10001:10001 /gcs /minio /s3 /oci
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/torch /opt/torch
WORKDIR /home/rakuten
USER 10001:10001
CMD ["rakuten", "--help"]
