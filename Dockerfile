# lora-hub, CPU image: `lorahub serve` (and `lorahub worker`) over Postgres and an S3-compatible store.
#
#   docker build -t lora-hub .
#   docker compose up            (docker-compose.yml: Postgres, MinIO, two servers, a worker)
#
# A CUDA variant for GPU workers: build FROM an NVIDIA CUDA runtime image with Python 3.11 and set
# TORCH_INDEX to the matching CUDA wheel index, e.g.
#   docker build --build-arg BASE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 \
#                --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t lora-hub:cuda .
# (then run workers with `--gpus all` and `lorahub worker --queue gpu`).
ARG BASE=python:3.11-slim
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    LORAHUB_HOME=/var/lib/lorahub

WORKDIR /src
# torch first, from the CPU (or CUDA) index, so that resolving lora-hub's extras does not pull
# another build of it.
RUN pip install --index-url "${TORCH_INDEX}" "torch==2.13.0"
COPY pyproject.toml README.md ./
COPY lora_hub ./lora_hub
COPY migrations ./migrations
RUN pip install ".[postgres,service,s3]" \
    && useradd --system --create-home --home-dir /var/lib/lorahub lorahub

USER lorahub
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz').status != 200)"
CMD ["lorahub", "serve", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
