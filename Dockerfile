# siamese-sweep worker: `docker compose up --scale worker=N` runs N of these.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    TF_CPP_MIN_LOG_LEVEL=2

WORKDIR /app
COPY pyproject.toml README.md ./
COPY siamese_core ./siamese_core
COPY sweeps ./sweeps
RUN pip install ".[distributed]"

RUN useradd --create-home --uid 10001 sweeps \
    && mkdir -p /specs /data && chown sweeps:sweeps /data
COPY docker/entrypoint.py /usr/local/bin/stack-entrypoint
USER sweeps
WORKDIR /home/sweeps
ENTRYPOINT ["python", "/usr/local/bin/stack-entrypoint", "worker"]
