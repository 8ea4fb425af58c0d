"""Gunicorn settings for Caredeck's web role (the image's default command) and for the
publisher's HTTP face (the same command with CAREDECK_PLUGINS=medications).

Tune with environment variables: WEB_CONCURRENCY (worker processes, default 2) and
GUNICORN_THREADS (threads per process, default 4). The port is fixed at 8000: the image's
HEALTHCHECK and the Kubernetes probes use it.
"""

import os

bind = "0.0.0.0:8000"  # noqa: S104 (inside a container; the port is published or proxied)
workers = int(os.environ.get("WEB_CONCURRENCY", "2"))
threads = int(os.environ.get("GUNICORN_THREADS", "4"))
# CSV exports and report pages may take a while; a hung request is still ended.
timeout = 60
# Kubernetes sends SIGTERM, waits terminationGracePeriodSeconds (40 s), then kills.
graceful_timeout = 30
keepalive = 5
# The heartbeat file on memory, not on a (possibly read-only or slow) container disk.
worker_tmp_dir = "/dev/shm"  # noqa: S108 (a tmpfs of the container's own)
# Caredeck logs one line per request itself (request id, status, duration): no access log.
accesslog = None
errorlog = "-"
