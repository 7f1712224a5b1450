"""A closed Mosquitto of a test's own, set up by `gasworks broker provision` exactly as the README says.

The machine's broker on 1883 is never touched: each test provisions a directory, starts
`mosquitto -c <dir>/mosquitto.conf` on a free port, and stops it afterwards.
"""

import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from typer.testing import CliRunner

from gasworks.adapters.meters.broker import password_for, read_site_secret
from gasworks.adapters.meters.transport import mqtt_client
from gasworks.entrypoints.cli.main import app
from tests.conftest import reachable, service_missing

METERS = ("00000000000001", "00000000000002")
START_WAIT_S = 10.0
WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ClosedBroker:
    directory: Path
    prefix: str
    port: int
    worker_url: str = ""
    fleet_url: str = ""
    process: subprocess.Popen | None = None

    def provision(self, *meters: str) -> str:
        args = ["broker", "provision", "--out", str(self.directory), "--prefix", self.prefix, "--port", str(self.port), "--bind", "127.0.0.1", "--no-from-database"]
        for serial in meters:
            args += ["--meter", serial]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        self.worker_url = re.search(r"mqtt://worker:\S+", result.output).group(0)
        self.fleet_url = re.search(r"mqtt://fleet:\S+", result.output).group(0)
        return result.output

    def meter_url(self, serial: str) -> str:
        return f"mqtt://{serial}:{password_for(read_site_secret(self.directory / 'site-secret'), serial)}@127.0.0.1:{self.port}"

    @property
    def anonymous_url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen(["mosquitto", "-c", str(self.directory / "mosquitto.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_WAIT_S
        while not reachable("127.0.0.1", self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise TimeoutError(f"closed mosquitto did not start (exit {self.process.poll()})")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@pytest.fixture
def closed_broker() -> Iterator[ClosedBroker]:
    if shutil.which("mosquitto") is None:
        service_missing("mosquitto binary not found (apt-get install mosquitto)")
    # Started as root, mosquitto reads its files as the `mosquitto` user: not from pytest's 0700 tmp_path.
    directory = Path(tempfile.mkdtemp(prefix="gasworks-broker-"))
    directory.chmod(0o755)
    broker = ClosedBroker(directory, f"test-{uuid.uuid4().hex[:10]}/meters", free_port())
    broker.provision(*METERS)
    broker.start()
    yield broker
    broker.stop()
    shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Client:
    """A bare MQTT client that records what it hears, for asserting what the broker lets through."""

    url: str
    client_id: str = field(default_factory=lambda: f"t-{uuid.uuid4().hex[:10]}")
    heard: list[tuple[str, bytes]] = field(default_factory=list)
    connack: object = None

    def __post_init__(self) -> None:
        self._connacked = threading.Event()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self.client = mqtt_client(self.url, self.client_id, clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object) -> None:
        self.connack = reason_code
        self._connacked.set()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.heard.append((message.topic, bytes(message.payload)))

    def connect(self) -> object:
        host, port = self.client._gasworks_address  # type: ignore[attr-defined]
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        assert self._connacked.wait(WAIT_S), "no CONNACK"
        return self.connack

    def subscribe(self, *topics: str) -> None:
        for topic in topics:
            self._subscribed.clear()
            self.client.subscribe(topic, qos=1)
            assert self._subscribed.wait(WAIT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(WAIT_S)

    def wait_for(self, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything heard up to and including `payload` (a sentinel sent after what is being proved)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            with self._lock:
                payloads = [p for _, p in self.heard]
                if payload in payloads:
                    return self.heard[: payloads.index(payload) + 1]
            assert time.monotonic() < deadline, f"{payload!r} never arrived"
            time.sleep(0.01)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
