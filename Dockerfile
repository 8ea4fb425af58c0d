# One image for every Caredeck role; the command picks the role (docs/operations.md):
#
#   web (default)  gunicorn --config /etc/caredeck/gunicorn.conf.py wsgi:app
#   migrations     caredeck db upgrade
#   worker         caredeck worker
#   consumer       caredeck consume --heartbeat-file /tmp/caredeck-consume.alive
#   publisher      the web command with CAREDECK_PLUGINS=medications (HTTP: POST
#                  /api/medication-events), or `caredeck publish FILE|-` (one-shot)
#
# No setting and no secret is baked in: every CAREDECK_* variable comes from the
# environment at run time (docker-compose.yml, deploy/k8s/).

ARG PYTHON_IMAGE=python:3.11-slim

# Builder: every wheel the application needs, built once. Nothing from this stage but the
# wheels reaches the runtime image.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml setup.cfg README.md wsgi.py ./
COPY core ./core
COPY jobs ./jobs
COPY plugins ./plugins
COPY static ./static
# gunicorn serves the web role; it is named here as well as (eventually) in setup.cfg so
# that the image has it either way.
ARG GUNICORN_REQUIREMENT="gunicorn>=23,<24"
RUN pip wheel --wheel-dir /wheels . "${GUNICORN_REQUIREMENT}"

# Runtime: a virtualenv installed from those wheels only (no compiler, no index), run by
# an unprivileged user.
FROM ${PYTHON_IMAGE} AS runtime
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH \
    CAREDECK_INSTANCE_PATH=/var/lib/caredeck/instance
# DejaVu Sans: the report PDFs' font for file names beyond Latin-1 (else boxes).
RUN apt-get update \
    && apt-get install -y --no-install-recommends fonts-dejavu-core \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-index --find-links /wheels caredeck gunicorn \
    && groupadd --system --gid 10001 caredeck \
    && useradd --system --uid 10001 --gid caredeck --home-dir /var/lib/caredeck \
        --shell /usr/sbin/nologin caredeck \
    && install -d -o caredeck -g caredeck -m 0750 \
        /var/lib/caredeck /var/lib/caredeck/instance /var/lib/caredeck/files
COPY deploy/gunicorn.conf.py /etc/caredeck/gunicorn.conf.py
WORKDIR /var/lib/caredeck
# Numeric, so that Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000
# Liveness of the roles that run gunicorn (web, and the publisher's HTTP face), without
# curl: the image's own Python asks /healthz. Other roles serve no HTTP; docker-compose.yml
# replaces this check for the consumer (its heartbeat file) and disables it for the rest.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
CMD ["gunicorn", "--config", "/etc/caredeck/gunicorn.conf.py", "wsgi:app"]
