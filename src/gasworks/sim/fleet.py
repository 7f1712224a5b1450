"""Many simulated meters behind one MQTT connection: firmware behaviour on the real broker.

Subscribes to every meter's downlink topic, lets the meter handle each frame, and publishes its
replies on the meter's uplink topic, as thousands of NB-IoT meters would through a platform.
On a closed broker it connects as the `fleet` user (`gasworks broker provision` prints its URL):
the simulator's gateway, allowed every meter's topics, which no real device is ever given.
"""

import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import paho.mqtt.client as mqtt

from gasworks.adapters.meters.transport import mqtt_client, next_broker, topic_down, topic_up
from gasworks.sim.meter import SimulatedMeter

SUBSCRIBE_WAIT_S = 10.0
PUBLISH_WAIT_S = 5.0


class MqttFleet:
    def __init__(self, url: str, *, prefix: str, meters: list[SimulatedMeter], on_frame: Callable[[str, bytes, float], None] | None = None) -> None:
        self.prefix = prefix
        self.meters = {m.serial: m for m in meters}
        self.on_frame = on_frame  # (serial, frame, perf_counter at arrival): for benchmarks
        self._lock = threading.Lock()
        self._handling = 0
        self.frames_down = 0  # downlinks heard, for its meters
        self.frames_up = 0  # reports and replies it published
        self._subscribed = threading.Event()
        self.client = mqtt_client(url, f"fleet-{uuid.uuid4().hex[:10]}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic_down(prefix, "+"), qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def _on_disconnect(self, *_args: object) -> None:
        """Lost: paho reconnects by itself, to the next node when the broker is a cluster."""
        self._subscribed.clear()
        next_broker(self.client)

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        serial = message.topic.split("/")[-2]
        meter = self.meters.get(serial)
        if meter is None:
            return
        payload = bytes(message.payload)
        with self._lock:
            self._handling += 1
            self.frames_down += 1
        try:
            if self.on_frame is not None:
                self.on_frame(serial, payload, arrived)
            with self._lock:
                replies = meter.on_downlink(payload)
                self.frames_up += len(replies)
            for reply in replies:
                client.publish(topic_up(self.prefix, serial), reply, qos=1)
        finally:
            with self._lock:
                self._handling -= 1

    def start(self) -> None:
        for _ in self.client._gasworks_addresses:  # type: ignore[attr-defined]
            host, port = self.client._gasworks_address  # type: ignore[attr-defined]
            try:
                self.client.connect(host, port, keepalive=30)
                break
            except OSError:  # a cluster's node that is down: the next one
                next_broker(self.client)
        else:
            raise ConnectionError(f"no MQTT broker answers at {self.client._gasworks_addresses}")  # type: ignore[attr-defined]
        self.client.loop_start()
        if not self._subscribed.wait(SUBSCRIBE_WAIT_S):
            raise TimeoutError(f"meter fleet could not subscribe within {SUBSCRIBE_WAIT_S} s")

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def idle(self) -> bool:
        with self._lock:
            return self._handling == 0

    def caught_up(self, *, downlinks_sent: int, uplinks_taken: int) -> bool:
        """Every downlink gasworks sent has reached its meter and every frame the meters sent has
        reached gasworks: nothing is on the wire. The simulation's clock may move on."""
        with self._lock:
            return self._handling == 0 and self.frames_down >= downlinks_sent and uplinks_taken >= self.frames_up

    def report(self, serial: str, clock: datetime) -> None:
        """The meter wakes and reports; it listens until told to sleep."""
        with self._lock:
            frame = self.meters[serial].report(clock)
            self.frames_up += 1
        self.client.publish(topic_up(self.prefix, serial), frame, qos=1).wait_for_publish(PUBLISH_WAIT_S)
