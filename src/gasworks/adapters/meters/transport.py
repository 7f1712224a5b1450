"""How frames travel between gasworks and meters: MQTT, or an in-process loopback for the embedded default.

Topic layout (MQTT, QoS 1 both ways), with the prefix from `mqtt_topic_prefix`:

    <prefix>/<serial>/up     meter -> gasworks: reports, acknowledgements, refusals
    <prefix>/<serial>/down   gasworks -> meter: write purchase, valve, reads

Every payload is one CJ/T 188-style frame (adapters/meters/cjt188.py). A transport hands uplinks
to the worker through a bounded queue; the worker does the database work on its own thread.
"""

import queue
import threading
import uuid
from collections.abc import Callable
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import structlog

log = structlog.get_logger(__name__)

UPLINK_QUEUE_MAX = 10_000
PUBLISH_WAIT_S = 5.0


class TransportError(Exception):
    """A frame could not be handed to the broker; the command stays pending and is tried again."""


class Uplinks:
    """A bounded queue of (serial, payload). When full, the transport waits: back-pressure, not loss."""

    def __init__(self, maxsize: int = UPLINK_QUEUE_MAX) -> None:
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=maxsize)

    def put(self, serial: str, payload: bytes) -> None:
        self._queue.put((serial, payload))

    def nudge(self) -> None:
        """Wake a waiting worker without a frame (an empty serial): there is work to look at."""
        self._queue.put(("", b""))

    def get(self, timeout_s: float) -> tuple[str, bytes] | None:
        try:
            return self._queue.get(timeout=timeout_s) if timeout_s > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def pending(self) -> int:
        return self._queue.qsize()


class LoopbackTransport:
    """The embedded default: meters are objects in this process (the simulator's, or a test's)."""

    def __init__(self) -> None:
        self.uplinks = Uplinks()
        self._meters: dict[str, Callable[[bytes], list[bytes]]] = {}
        self._lock = threading.Lock()

    def attach(self, serial: str, on_downlink: Callable[[bytes], list[bytes]]) -> None:
        """A meter listening for downlinks; what it answers comes back as uplinks."""
        with self._lock:
            self._meters[serial] = on_downlink

    def send_uplink(self, serial: str, payload: bytes) -> None:
        self.uplinks.put(serial, payload)

    def publish(self, serial: str, payload: bytes) -> None:
        with self._lock:
            meter = self._meters.get(serial)
        if meter is None:
            return  # nobody listening: like a broker with no subscriber, the frame is gone
        for reply in meter(payload):
            self.uplinks.put(serial, reply)

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def topic_up(prefix: str, serial: str) -> str:
    return f"{prefix}/{serial}/up"


def topic_down(prefix: str, serial: str) -> str:
    return f"{prefix}/{serial}/down"


def mqtt_client(url: str, client_id: str) -> mqtt.Client:
    """A paho client for mqtt://[user:password@]host[:port] (credentials from the URL, i.e. config)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("mqtt", "tcp") or not parsed.hostname:
        raise ValueError(f"MQTT URL must look like mqtt://user:password@host:1883, got {url!r}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"gasworks-{uuid.uuid4().hex[:12]}", clean_session=False)
    if parsed.username:
        client.username_pw_set(unquote(parsed.username), unquote(parsed.password or ""))
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client._gasworks_address = (parsed.hostname, parsed.port or 1883)  # type: ignore[attr-defined]
    return client


class MqttTransport:
    """gasworks' side on a broker: subscribes to every meter's uplink, publishes downlinks with QoS 1.

    A persistent session (clean_session=False, fixed client id) makes the broker keep QoS 1 uplinks
    that arrive while the worker is down, so a restarted worker still hears them.
    """

    def __init__(self, url: str, *, prefix: str, client_id: str = "") -> None:
        self.prefix = prefix
        self.uplinks = Uplinks()
        self._connected = threading.Event()
        self._client = mqtt_client(url, client_id)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            log.warning("mqtt_connect_refused", reason=str(reason_code))
            return
        client.subscribe(topic_up(self.prefix, "+"), qos=1)
        self._connected.set()
        log.info("mqtt_connected", prefix=self.prefix)

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object) -> None:
        self._connected.clear()
        log.warning("mqtt_disconnected", reason=str(reason_code))

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) < 3 or parts[-1] != "up":
            log.warning("mqtt_unexpected_topic", topic=message.topic)
            return
        self.uplinks.put(parts[-2], bytes(message.payload))

    def start(self, connect_timeout_s: float = 10.0) -> None:
        host, port = self._client._gasworks_address  # type: ignore[attr-defined]
        self._client.connect_async(host, port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(connect_timeout_s):
            log.warning("mqtt_not_connected_yet", host=host, port=port)

    def stop(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def publish(self, serial: str, payload: bytes) -> None:
        if not self._connected.is_set():
            raise TransportError("not connected to the MQTT broker")
        info = self._client.publish(topic_down(self.prefix, serial), payload, qos=1)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(f"broker refused the frame: {mqtt.error_string(info.rc)}")
        try:
            info.wait_for_publish(PUBLISH_WAIT_S)
        except (RuntimeError, ValueError) as error:
            raise TransportError(f"frame not acknowledged by the broker: {error}") from None
        if not info.is_published():
            raise TransportError(f"broker did not acknowledge the frame within {PUBLISH_WAIT_S} s")
