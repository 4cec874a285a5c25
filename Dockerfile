# One image for every role; the command picks it:
#   python -m gateway | python -m pipeline_worker | python -m inference ... | mlflow server ...
FROM python:3.11-slim

# git: the pipeline worker clones repositories. tini: a PID 1 that forwards SIGTERM and reaps
# what it leaves behind. iproute2: `ip` brings up the loopback of the sandbox's own network
# (util-linux, which makes the sandbox, is part of every Debian image).
RUN apt-get update \
    && apt-get install -y --no-install-recommends git tini iproute2 \
    && rm -rf /var/lib/apt/lists/*

ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_NO_CACHE=1

WORKDIR /app

# The runtime dependencies of pyproject.toml at exactly the versions in requirements.lock
# (the lock also pins the dev tools, which the image leaves out). Bytecode is compiled here so
# the first `mlflow server` start is not slower.
COPY pyproject.toml requirements.lock ./
RUN python -m venv $VIRTUAL_ENV \
    && pip install --no-cache-dir --disable-pip-version-check uv==0.13.9 \
    && uv pip install --python $VIRTUAL_ENV/bin/python -r pyproject.toml -c requirements.lock \
    && pip uninstall --yes uv

# The services run from the source tree (`python -m gateway` ...): nothing to build.
COPY mlops_core ./mlops_core
COPY inference ./inference
COPY pipeline_worker ./pipeline_worker
COPY gateway ./gateway
# `launcher.wait` is the containers' readiness probe in docker-compose.yml.
COPY launcher ./launcher
ENV PYTHONPATH=/app

# Non-root, with a writable HOME (onnxruntime and Jupyter write caches under ~/.cache and
# ~/.local) and /data for state; named volumes mounted there inherit this ownership.
RUN useradd --create-home --home-dir /home/mlops --uid 10001 --user-group mlops \
    && mkdir -p /data/mlflow /home/mlops/models \
    && chown -R mlops:mlops /data /home/mlops
USER mlops
ENV HOME=/home/mlops \
    MLOPS_DATA_DIR=/data \
    MLOPS_MODEL_REPOSITORY=/home/mlops/models

EXPOSE 8000 8001 5000 50051
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "gateway"]
