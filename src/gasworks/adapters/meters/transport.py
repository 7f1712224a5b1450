"""How frames travel between gasworks and meters: MQTT, or an in-process loopback for the embedded default.

Topic layout (MQTT, QoS 1 both ways), with the prefix from `mqtt_topic_prefix`:

    <prefix>/<serial>/up     meter -> gasworks: reports, acknowledgements, refusals
    <prefix>/<serial>/down   gasworks -> meter: write purchase, valve, reads

Every payload is one CJ/T 188-style frame (adapters/meters/cjt188.py). A transport hands uplinks
to the worker through a bounded queue; the worker does the database work on its own thread.
Workers subscribe to `$share/gasworks/<prefix>/+/up`, so each uplink reaches one worker. Who may
publish and read which topic on a closed broker: adapters/meters/broker.py.
"""

import hashlib
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import structlog

from gasworks.observability import (
    mqtt_connected,
    mqtt_connection_attempts,
    mqtt_disconnects,
    mqtt_downlinks_in_flight,
    mqtt_inflight_window_full,
    mqtt_uplinks_received,
)

log = structlog.get_logger(__name__)

UPLINK_QUEUE_MAX = 10_000
PUBLISH_WAIT_S = 5.0  # how long a publish waits for room in a full in-flight window before it fails
INFLIGHT_MAX = 100  # QoS 1 downlinks handed to the broker and not yet acknowledged (PUBACK), per transport
KEEPALIVE_S = 15  # a worker gone silent without closing its connection leaves the share 1.5 x this after its last packet
RECONNECT_DELAY_S_MIN = 0.5
RECONNECT_DELAY_S_MAX = 30.0
LOOP_TIMEOUT_S = 0.5  # the network loop looks at `stop` at least this often
SHARE_GROUP = "gasworks"  # on a broker without passwords (a test broker): $share/gasworks/<prefix>/+/up


def share_group_for(password: str | None) -> str:
    """The workers' share group, derived from their broker password: any client may join a share
    group by name, and a meter that joined the workers' group would take (and lose) their uplinks.
    Only who knows the workers' password can name it; `gasworks broker provision` writes it to the ACL."""
    if not password:
        return SHARE_GROUP
    return "gw" + hashlib.sha256(b"gasworks share group\n" + password.encode()).hexdigest()[:20]


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


def mqtt_client(url: str, client_id: str, *, clean_session: bool = False) -> mqtt.Client:
    """A paho client for mqtt://[user:password@]host[:port] (credentials from the URL, i.e. config).

    A clustered broker is named by its nodes, `mqtt://[user:password@]h1:p1,h2:p2,h3:p3`: the
    client starts on the first, and `next_broker` moves it to the next after a lost connection."""
    parsed = urlparse(url)
    userinfo, _, hosts = parsed.netloc.rpartition("@")
    addresses = [_address(host) for host in hosts.split(",") if host]
    if parsed.scheme not in ("mqtt", "tcp") or not addresses or not all(host for host, _ in addresses):
        raise ValueError(f"MQTT URL must look like mqtt://user:password@host:1883 (or host1:port1,host2:port2), got {url!r}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"gasworks-{uuid.uuid4().hex[:12]}", clean_session=clean_session)
    if userinfo:
        username, _, password = userinfo.partition(":")
        client.username_pw_set(unquote(username), unquote(password))
    client.reconnect_delay_set(min_delay=1, max_delay=10)
    client._gasworks_addresses = addresses  # type: ignore[attr-defined]
    client._gasworks_address = addresses[0]  # type: ignore[attr-defined]
    return client


def _address(host_port: str) -> tuple[str, int]:
    host, _, port = host_port.rpartition(":") if host_port.rsplit(":", 1)[-1].isdigit() else (host_port, "", "")
    return host, int(port) if port else 1883


def next_broker(client: mqtt.Client) -> tuple[str, int]:
    """Point a disconnected client at the next node of its cluster (the same one if it has one)."""
    addresses: list[tuple[str, int]] = client._gasworks_addresses  # type: ignore[attr-defined]
    current = client._gasworks_address  # type: ignore[attr-defined]
    following = addresses[(addresses.index(current) + 1) % len(addresses)]
    client._gasworks_address = following  # type: ignore[attr-defined]
    client._host, client._port = following  # paho's own fields: its `host` setter refuses while a connection is being made
    return following


@dataclass(frozen=True)
class Backoff:
    """Capped exponential backoff with jitter between connection attempts to the broker.

    Attempt n (0, 1, 2 ...) after a lost or failed connection waits a random time in
    [cap/2, cap], cap = min(delay_s_max, delay_s_min * 2**n): workers that lost the same broker do
    not all knock at once when it comes back, and none waits longer than `delay_s_max`.
    """

    delay_s_min: float = RECONNECT_DELAY_S_MIN
    delay_s_max: float = RECONNECT_DELAY_S_MAX

    def __post_init__(self) -> None:
        if not 0 < self.delay_s_min <= self.delay_s_max:
            raise ValueError(f"reconnect delays need 0 < min <= max, got {self.delay_s_min}, {self.delay_s_max}")

    def delay_s(self, attempt: int, rng: random.Random) -> float:
        cap = min(self.delay_s_max, self.delay_s_min * 2 ** min(attempt, 32))
        return cap / 2 + rng.uniform(0, cap / 2)


class MqttTransport:
    """gasworks' side on a broker: hears meters' uplinks, publishes downlinks with QoS 1.

    Uplinks are shared among workers by the broker: every worker subscribes to
    `$share/gasworks/<prefix>/+/up`, and the broker hands each uplink to exactly one of them. Each
    worker has a clean session: when it dies the broker forgets it at once and gives its share to
    the others (a persistent member would have 1/N of the uplinks queued for it while dead). An
    uplink lost in flight with a dying worker is not lost to the meter: its next report says the
    same again. Set `shared=False` to hear every uplink (one worker alone, or a broker without
    shared subscriptions).

    The connection is kept by this transport's own thread: after a lost or failed connection it
    waits per `Backoff` (capped, jittered), logs once per change of state (connected, lost,
    unreachable, back with how long it was away), and counts every attempt.

    Downlinks go out through a bounded window: `publish` hands the frame to the network thread and
    returns at once, holding one of `inflight_max` slots until the broker's PUBACK frees it; with
    the window full it waits up to PUBLISH_WAIT_S for a slot, then fails (TransportError: the
    command is not marked sent). The dispatcher no longer waits a broker round trip per frame
    while it holds the meter's lock. A frame still unacknowledged when the connection drops is
    sent again by paho on reconnect (QoS 1, DUP set), keeping its slot; if this process dies with
    it, the command is SENT in the database and goes again after its acknowledgement wait or at
    the meter's next report, as any frame the meter did not answer.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        client_id: str = "",
        shared: bool = True,
        keepalive_s: int = KEEPALIVE_S,
        backoff: Backoff | None = None,
        inflight_max: int = INFLIGHT_MAX,
    ) -> None:
        if not 1 <= inflight_max <= 65_535:
            raise ValueError(f"the in-flight window is 1-65535 frames (MQTT packet ids), got {inflight_max}")
        self.prefix = prefix
        self.inflight_max = inflight_max
        self._window = threading.BoundedSemaphore(inflight_max)
        self._window_lock = threading.Lock()
        self._in_flight: set[int] = set()  # packet ids published and not yet acknowledged
        self._acked_early: set[int] = set()  # PUBACK heard before publish() recorded its packet id
        self.in_flight_peak = 0
        self.uplinks = Uplinks()
        group = share_group_for(urlparse(url).password)
        self.subscription = f"$share/{group}/{prefix}/+/up" if shared else topic_up(prefix, "+")
        self.keepalive_s = keepalive_s
        self.backoff = backoff or Backoff()
        self._rng = random.Random()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._state = "new"  # new, connected, lost, unreachable: logged when it changes
        self._lost_at: float | None = None
        self._client = mqtt_client(url, client_id, clean_session=True)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message
        self._client.on_publish = self._on_publish
        self._client.max_inflight_messages_set(inflight_max)

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object) -> None:
        if getattr(reason_code, "is_failure", False):
            mqtt_connection_attempts.labels("refused").inc()
            self._change_state("refused", reason=str(reason_code))
            return
        mqtt_connection_attempts.labels("connected").inc()
        client.subscribe(self.subscription, qos=1)
        self._connected.set()
        mqtt_connected.set(1)
        away_s = None if self._lost_at is None else round(time.monotonic() - self._lost_at, 3)
        self._lost_at = None
        self._change_state("connected", subscription=self.subscription, away_s=away_s)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reason_codes: list, properties: object) -> None:
        if any(getattr(code, "is_failure", False) for code in reason_codes):
            log.error("mqtt_subscribe_refused", subscription=self.subscription, reason=[str(c) for c in reason_codes])
            return
        self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: object, reason_code: object, properties: object) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        self._subscribed.clear()
        mqtt_connected.set(0)
        if was_connected and not self._stopping.is_set():
            mqtt_disconnects.inc()
            self._lost_at = time.monotonic()
            self._change_state("lost", reason=str(reason_code))

    def _change_state(self, state: str, **fields: object) -> None:
        """One log line per change of state, never one per attempt."""
        if state == self._state:
            return
        self._state = state
        if state == "connected":
            log.info("mqtt_connected", **fields)
        else:
            log.warning(f"mqtt_{state}", **fields)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        if len(parts) < 3 or parts[-1] != "up":
            log.warning("mqtt_unexpected_topic", topic=message.topic)
            return
        mqtt_uplinks_received.inc()
        self.uplinks.put(parts[-2], bytes(message.payload))

    def _on_publish(self, client: mqtt.Client, userdata: object, mid: int, reason_code: object, properties: object) -> None:
        """The broker acknowledged a downlink (PUBACK): its slot in the window is free."""
        with self._window_lock:
            if mid not in self._in_flight:
                self._acked_early.add(mid)
                return
            self._in_flight.discard(mid)
            mqtt_downlinks_in_flight.set(len(self._in_flight))
        self._window.release()

    @property
    def in_flight(self) -> int:
        """Downlinks handed to the broker and not acknowledged yet."""
        with self._window_lock:
            return len(self._in_flight)

    def _keep_connected(self) -> None:
        """Connect, run the network loop while connected, wait per the backoff, again, until stopped."""
        host, port = self._client._gasworks_address  # type: ignore[attr-defined]
        # As loop_start() does: publishes from other threads only queue and wake this loop, which alone writes.
        self._client._thread = threading.current_thread()  # type: ignore[attr-defined]
        self._client.connect_async(host, port, keepalive=self.keepalive_s)
        attempt = 0
        while not self._stopping.is_set():
            if attempt > 0:
                host, port = next_broker(self._client)
            try:
                self._client.reconnect()
            except OSError as error:
                mqtt_connection_attempts.labels("failed").inc()
                if self._lost_at is None:
                    self._lost_at = time.monotonic()
                self._change_state("unreachable", host=host, port=port, reason=str(error))
            else:
                # Until the connection ends (stop() sends DISCONNECT, which this loop writes out).
                while self._client.loop(timeout=LOOP_TIMEOUT_S) == mqtt.MQTT_ERR_SUCCESS:
                    if self._connected.is_set():
                        attempt = 0
                    elif self._stopping.is_set():
                        break
            if self._stopping.is_set():
                break
            self._stopping.wait(self.backoff.delay_s(attempt, self._rng))
            attempt += 1

    def start(self, connect_timeout_s: float = 10.0) -> None:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._keep_connected, name="gasworks-mqtt", daemon=True)
        self._thread.start()
        if not self._subscribed.wait(connect_timeout_s):
            host, port = self._client._gasworks_address  # type: ignore[attr-defined]
            log.warning("mqtt_not_connected_yet", host=host, port=port)

    def stop(self) -> None:
        self._stopping.set()
        self._client.disconnect()
        if self._thread is not None:
            self._thread.join(LOOP_TIMEOUT_S * 4 + 5)
            self._thread = None
        self._connected.clear()
        self._subscribed.clear()
        mqtt_connected.set(0)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def subscribed(self) -> bool:
        """Connected and hearing its share of the uplinks."""
        return self._subscribed.is_set()

    def publish(self, serial: str, payload: bytes) -> None:
        """Hand one frame to the broker (QoS 1) without waiting for its PUBACK; wait for room in the window."""
        if not self._connected.is_set():
            raise TransportError("not connected to the MQTT broker")
        if not self._window.acquire(timeout=0):
            mqtt_inflight_window_full.inc()
            if not self._window.acquire(timeout=PUBLISH_WAIT_S):
                raise TransportError(f"{self.inflight_max} frames in flight and none acknowledged by the broker within {PUBLISH_WAIT_S} s")
        try:
            info = self._client.publish(topic_down(self.prefix, serial), payload, qos=1)
        except (RuntimeError, ValueError) as error:
            self._window.release()
            raise TransportError(f"broker refused the frame: {error}") from None
        if info.rc != mqtt.MQTT_ERR_SUCCESS and info.rc != mqtt.MQTT_ERR_NO_CONN:
            self._window.release()
            raise TransportError(f"broker refused the frame: {mqtt.error_string(info.rc)}")
        # MQTT_ERR_NO_CONN: the connection dropped just now; paho keeps the frame and sends it on reconnect.
        with self._window_lock:
            if info.mid in self._acked_early:
                self._acked_early.discard(info.mid)
                release = True
            else:
                self._in_flight.add(info.mid)
                self.in_flight_peak = max(self.in_flight_peak, len(self._in_flight))
                mqtt_downlinks_in_flight.set(len(self._in_flight))
                release = False
        if release:
            self._window.release()
