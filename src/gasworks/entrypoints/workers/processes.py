"""`gasworks worker --processes N`: N worker processes on one host, sharing the work.

Each child is `gasworks worker` again, with the parent's settings in its environment, so running
the command N times by hand does the same thing. They share the work two ways, neither of them
ours to coordinate: due meters are claimed in batches with FOR UPDATE SKIP LOCKED (PostgreSQL), and
uplinks are dealt out by the broker's shared subscription ($share/<group>/<prefix>/+/up), each to
one worker. Each child gets its own metrics port (the parent's + its index) and MQTT client id.
"""

import os
import subprocess
import sys
import threading

import structlog

from gasworks.config import Settings

log = structlog.get_logger(__name__)

PROCESSES_MAX = 64
STOP_WAIT_S = 15.0
WORKER_COMMAND = (sys.executable, "-c", "from gasworks.entrypoints.cli.main import app; app()", "worker")


def child_environment(settings: Settings, index: int, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of worker process `index` (1, 2 ...): the parent's settings that differ per process."""
    env = dict(os.environ if base is None else base)
    env["GASWORKS_DATABASE_URL"] = settings.database_url
    if settings.mqtt_url:
        env["GASWORKS_MQTT_URL"] = settings.mqtt_url
    env["GASWORKS_WORKER_PROCESSES"] = "1"  # a child never starts children of its own
    env["GASWORKS_CHANNEL_JOBS"] = ""  # the parent calls the channels; children deliver (each call once, not N times)
    env["GASWORKS_WATCHDOG_INTERVAL_S"] = str(settings.watchdog_interval_s)
    env["GASWORKS_WORKER_METRICS_PORT"] = str(settings.worker_metrics_port + index if settings.worker_metrics_port else 0)
    env["GASWORKS_MQTT_CLIENT_ID"] = f"{settings.mqtt_client_id}-{index}" if settings.mqtt_client_id else ""  # clean sessions: one id, one worker
    return env


class WorkerProcesses:
    """Children running `gasworks worker`; stopped together (SIGTERM, then SIGKILL after STOP_WAIT_S)."""

    def __init__(self, settings: Settings, count: int, *, command: tuple[str, ...] = WORKER_COMMAND, quiet: bool = False) -> None:
        if not 0 <= count < PROCESSES_MAX:
            raise ValueError(f"0 to {PROCESSES_MAX - 1} worker processes beside this one, got {count}")
        self.settings = settings
        self.count = count
        self.command = command
        self.quiet = quiet
        self.children: list[subprocess.Popen] = []
        self._stopping = threading.Event()

    def start(self) -> None:
        output = subprocess.DEVNULL if self.quiet else None
        for index in range(1, self.count + 1):
            child = subprocess.Popen(self.command, env=child_environment(self.settings, index), stdout=output, stderr=output)
            self.children.append(child)
            threading.Thread(target=self._watch, args=(index, child), name=f"gasworks-worker-{index}-watch", daemon=True).start()
            log.info("worker_process_started", index=index, pid=child.pid)

    def _watch(self, index: int, child: subprocess.Popen) -> None:
        code = child.wait()
        if not self._stopping.is_set():  # loudly: the others carry its share, but someone must look
            log.error("worker_process_exited", index=index, pid=child.pid, exit_code=code)

    def alive(self) -> int:
        return sum(1 for child in self.children if child.poll() is None)

    def stop(self) -> None:
        self._stopping.set()
        for child in self.children:
            if child.poll() is None:
                child.terminate()
        for child in self.children:
            try:
                child.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                log.error("worker_process_killed", pid=child.pid, after_s=STOP_WAIT_S)
                child.kill()
                child.wait()
        self.children = []
