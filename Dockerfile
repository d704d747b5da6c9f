# One image for the API and the GPU worker (the command differs; see docker-compose.yml).
# The pins in requirements.txt include torch 2.14.1 (a CUDA 13 build): the worker uses the GPU when the
# container gets one (NVIDIA Container Toolkit); the API runs predictions where PROMPTUNE_INFERENCE_DEVICE
# says (auto: the GPU when the container has one; the api-gpu service in docker-compose.yml).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    PROMPTUNE_DATA_DIR=/data

RUN apt-get update \
    && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 promptune \
    && mkdir -p /data && chown promptune /data

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt
COPY pyproject.toml README.md alembic.ini ./
COPY models ./models
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
COPY devstack ./devstack
COPY promptune ./promptune
RUN pip install --no-deps .

USER promptune
EXPOSE 8000
# Default: the API. The worker service overrides the command with `promptune worker`.
CMD ["promptune", "serve", "--host", "0.0.0.0", "--port", "8000"]
