"""`gasworks province worker`: one `gasworks worker` process per city, each on its city's database
and its city's meter topics, so each meter message reaches its city's shard and no other.

A city's worker that stops (its database was down when it started, say) is started again after a
pause that doubles up to RESTART_PAUSE_S_MAX; the other cities' workers never notice.
"""

import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog

from gasworks.config import Settings
from gasworks.entrypoints.workers.processes import STOP_WAIT_S, WORKER_COMMAND, child_environment

log = structlog.get_logger(__name__)

RESTART_PAUSE_S_FIRST = 1.0
RESTART_PAUSE_S_MAX = 60.0
SUPERVISE_POLL_S = 0.5


def city_worker_environment(settings: Settings) -> dict[str, str]:
    env = child_environment(settings, 0)
    env.pop("GASWORKS_PROVINCE_FILE", None)
    env["GASWORKS_MQTT_TOPIC_PREFIX"] = settings.mqtt_topic_prefix
    env["GASWORKS_PUBLIC_BASE_URL"] = settings.public_base_url
    env["GASWORKS_CHANNEL_JOBS"] = settings.channel_jobs  # each city's worker calls its own city's channels
    return env


@dataclass
class CityWorker:
    code: str
    settings: Settings
    process: subprocess.Popen | None = None
    restarts: int = 0
    restart_at: float = 0.0

    def start(self, command: tuple[str, ...]) -> None:
        self.process = subprocess.Popen(command, env=city_worker_environment(self.settings))
        log.info("city_worker_started", city=self.code, pid=self.process.pid)


class CityWorkers:
    def __init__(self, settings_by_city: Mapping[str, Settings], *, command: tuple[str, ...] = WORKER_COMMAND) -> None:
        self.workers = [CityWorker(code, settings) for code, settings in settings_by_city.items()]
        self.command = command

    def start(self) -> None:
        for worker in self.workers:
            worker.start(self.command)

    def supervise(self, stop: threading.Event) -> None:
        while not stop.wait(SUPERVISE_POLL_S):
            now = time.monotonic()
            for worker in self.workers:
                if worker.process is None or worker.process.poll() is None:
                    continue
                if worker.restart_at == 0.0:
                    pause = min(RESTART_PAUSE_S_MAX, RESTART_PAUSE_S_FIRST * 2**worker.restarts)
                    worker.restart_at = now + pause
                    log.error("city_worker_exited", city=worker.code, exit_code=worker.process.returncode, restart_in_s=pause)
                elif now >= worker.restart_at:
                    worker.restarts += 1
                    worker.restart_at = 0.0
                    worker.start(self.command)

    def alive(self) -> dict[str, bool]:
        return {w.code: w.process is not None and w.process.poll() is None for w in self.workers}

    def stop(self) -> None:
        for worker in self.workers:
            if worker.process is not None and worker.process.poll() is None:
                worker.process.terminate()
        for worker in self.workers:
            if worker.process is None:
                continue
            try:
                worker.process.wait(STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
