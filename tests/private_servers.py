"""Private instances of the machine's PostgreSQL, Redis and RabbitMQ, for tests that stop,
restart or kill servers (tests/test_scale_out.py).

The same server programs as the machine's, each on free ports with its data in a temporary
folder: a test may restart them at will without disturbing anything else that uses the
machine's servers, and whatever happens to the test, ``stop()`` ends them.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def wait_until(check, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} within {seconds:g} s")


def missing_programs() -> list[str]:
    """The server programs this machine lacks (the tests need all of them)."""
    wanted = {"postgres": _pg_bin("postgres"), "redis-server": shutil.which("redis-server")}
    wanted["rabbitmq-server"] = _rabbitmq_server()
    return sorted(name for name, path in wanted.items() if not path)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name) or sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if isinstance(found, list):
        return found[-1] if found else None
    return found


def _rabbitmq_server() -> str | None:
    # Debian's /usr/sbin/rabbitmq-server switches to the rabbitmq user, whose own settings
    # (node name, port) it reads; the script it wraps takes ours.
    for path in ("/usr/lib/rabbitmq/bin/rabbitmq-server", shutil.which("rabbitmq-server")):
        if path and os.path.exists(path):
            return path
    return None


def _folder(prefix: str) -> Path:
    # Under /tmp with a traversable parent: PostgreSQL runs as the postgres user.
    path = Path(tempfile.mkdtemp(prefix=f"caredeck-{prefix}-"))
    path.chmod(0o755)
    return path


class Server:
    name = "server"
    port: int

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def running(self) -> bool:
        return port_open(self.port)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


class PrivatePostgres(Server):
    name = "PostgreSQL"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = _folder("pg")
        self.data = self.root / "data"
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.root, "postgres")
        self._run(
            _pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
                "fsync = off\nfull_page_writes = off\n"  # a test's data, not a record
            )

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv) -> None:
        subprocess.run([*self.user, *argv], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        log = self.root / "server.log"
        self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(log), "-w", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are cut, as in a failover or a restart."""
        if (self.data / "postmaster.pid").exists():
            self._run(_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis(Server):
    """Redis with its append-only file on: a restart keeps the queued jobs, as the
    Dramatiq broker's Redis must in production (docs/operations.md, "Backups")."""

    name = "Redis"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = _folder("redis")
        self.process: subprocess.Popen | None = None

    def url(self, db: int) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.root),
             "--logfile", str(self.root / "server.log")],
        )  # fmt: skip
        wait_until(self.running, 30, "Redis did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(30)
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRabbitMQ(Server):
    name = "RabbitMQ"

    def __init__(self) -> None:
        self.port = free_port()
        self.root = _folder("rabbitmq")
        self.node = f"caredeck{self.port}@localhost"
        (self.root / "enabled_plugins").write_text("[].\n")
        (self.root / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.root / "rabbitmq-env.conf").write_text("ERL_EPMD_ADDRESS=127.0.0.1\n")
        self.env = {
            **os.environ,
            "HOME": str(self.root),  # the Erlang cookie of this node
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONF_ENV_FILE": str(self.root / "rabbitmq-env.conf"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
        }
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def start(self) -> None:
        with open(self.root / "server.out", "ab") as out:
            self.process = subprocess.Popen(
                [_rabbitmq_server()],
                cwd=self.root,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self.running, 120, "RabbitMQ did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        wait_until(lambda: not self.running(), 30, "RabbitMQ did not stop")
        self.process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
