"""Gunicorn settings for Caredeck's web role (the image's default command) and for the
publisher's HTTP face (the same command with CAREDECK_PLUGINS=medications).

Tune with environment variables: WEB_CONCURRENCY (worker processes, default 2) and
GUNICORN_THREADS (threads per process, default 4). The port is fixed at 8000: the image's
HEALTHCHECK and the Kubernetes probes use it.

Metrics (docs/operations.md, "Monitoring"): each worker process writes its samples to files
in PROMETHEUS_MULTIPROC_DIR and whichever process answers /metrics adds up all of them.
The folder is this server's own: emptied when the server starts (files of an earlier run
would be counted again), and a dead worker's live gauges are removed when it exits (its
counters stay, so that totals never go back).
"""

import contextlib
import glob
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


def on_starting(server):
    # Before any worker is forked, and so before prometheus_client is imported: it picks its
    # multiprocess mode when first imported. One folder per server (per container, or per
    # master process on a shared machine) unless PROMETHEUS_MULTIPROC_DIR names one.
    folder = os.environ.setdefault(
        "PROMETHEUS_MULTIPROC_DIR", f"{worker_tmp_dir}/caredeck-metrics-{os.getpid()}"
    )
    os.makedirs(folder, mode=0o700, exist_ok=True)
    _remove_samples(folder)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, os.environ["PROMETHEUS_MULTIPROC_DIR"])


def on_exit(server):
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    _remove_samples(folder)
    with contextlib.suppress(OSError):
        os.rmdir(folder)  # only if empty: the folder may have been the operator's choice


def _remove_samples(folder):
    # Only prometheus_client's files: the folder may be shared with something else.
    for path in glob.glob(os.path.join(folder, "*.db")):
        os.remove(path)
