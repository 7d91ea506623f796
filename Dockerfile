# syntax=docker/dockerfile:1
#
# One image for every role of the job service (api, worker, reconciler, migrate); the role is
# chosen by the command (see docker-compose.yml). Configuration comes only from environment
# variables: nothing host-specific is baked in.
#
#   docker build -t teacher-service .

# ---------------------------------------------------------------------------- build stage
# Compilers live only here: some wheels may need building on a new platform, and none of the
# toolchain (or pip's caches) may reach the runtime image.
FROM python:3.11-slim AS build

RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*

# A virtual environment is one directory we can copy whole into the runtime stage.
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
# requirements.lock (written by `make lock` from pyproject.toml's ranges) pins every package with
# its hashes, torch==2.14.1 and torchvision==0.29.1 included: on x86-64 Linux PyPI's torch wheel
# is the CUDA build, so no separate index or pin is used here (tests/unit/test_deploy_files.py checks
# that this file never grows a second torch pin). The image gets the whole lock, the set CI
# tests (the test tools add a few tens of MB to the several GB of torch and CUDA).
# (A layer of its own: source edits do not reinstall the dependencies.)
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY pyproject.toml README.md ./
COPY api ./api
COPY common ./common
COPY worker ./worker
# Then the project alone (its dependencies are the lock's). Not editable: the runtime stage gets
# the installed package, not the source tree.
RUN pip install --no-cache-dir --no-deps '.[service]' \
 && pip check \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------- runtime stage
FROM python:3.11-slim AS runtime

# A fixed uid/gid so that bind-mounted ./volumes can be chowned once on the host
# (`sudo chown -R 10001:10001 volumes`), or overridden with compose's `user:`.
ARG TEACHER_UID=10001
ARG TEACHER_GID=10001
RUN groupadd --system --gid ${TEACHER_GID} teacher \
 && useradd --system --uid ${TEACHER_UID} --gid teacher --home-dir /home/teacher --create-home \
        --shell /usr/sbin/nologin teacher \
 && mkdir -p /data/datasets /data/jobs /data/runs /data/state /data/torch \
 && chown -R teacher:teacher /data

COPY --from=build /opt/venv /opt/venv
# The bundled configs, so that `teacher submit configs/teacher_global.yaml` and API submissions
# by config name work inside the container.
COPY --chown=root:root configs /app/configs

# PYTHONUNBUFFERED: logs reach `docker logs` as they are written, not when a buffer fills (or
# never, when a container is killed). The /data layout is what docker-compose.yml mounts.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TEACHER_DATA_ROOT=/data/datasets \
    TEACHER_JOBS_ROOT=/data/jobs \
    TEACHER_RUNS_ROOT=/data/runs \
    TEACHER_DATABASE_URL=sqlite:////data/state/teacher.db \
    TEACHER_CONFIGS_DIR=/app/configs \
    TORCH_HOME=/data/torch \
    MPLCONFIGDIR=/tmp/matplotlib \
    GUNICORN_CMD_ARGS="--workers 2 --worker-class gthread --threads 8 --graceful-timeout 20 --access-logfile -"

WORKDIR /app
USER teacher
VOLUME ["/data"]
EXPOSE 8000

# For the api role: /api/v1/health answers 503 when the database or Redis is unreachable, which
# urlopen raises on. No curl in the image, so plain Python. Non-HTTP roles (worker, reconciler,
# migrate) override or disable this check in docker-compose.yml.
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=8).status == 200 else 1)"]

# Exec form: gunicorn is PID 1's direct child under compose's `init: true` and gets SIGTERM.
CMD ["gunicorn", "api:create_app()", "-c", "python:common.apps.gunicorn_conf", "-b", "0.0.0.0:8000"]
