"""Meters on a NATS cluster: uplinks through a JetStream work queue, each to exactly one worker.

Meters speak MQTT to any node of the cluster (NATS' MQTT gateway): topic `a/b/c` is NATS subject
`a.b.c`. NATS' MQTT has no shared subscriptions (`$share`), so uplinks are shared the NATS way: a
work-queue stream (retention WorkQueue, replicated on `replicas` nodes) captures every
`<prefix>.*.up`, and every worker pulls from one durable consumer. JetStream gives each message
to one puller and removes it once acknowledged; a message given and not acknowledged within
ACK_WAIT_S (a worker that died) goes to another.

A worker acknowledges an uplink when it has taken it into its own bounded queue, as a QoS 1
subscriber's PUBACK does on Mosquitto: an uplink lost with a dying worker is not lost to the meter,
whose next report says the same again (a purchase waits in the database, never in a queue).

Downlinks are published on `<prefix>.<serial>.down`, which the meter hears on its MQTT
subscription while it is connected, i.e. awake after its report. NATS core does not keep a frame
for a meter that is gone; the command stays sent and goes again after its acknowledgement wait or
at the meter's next report, as any frame the meter did not answer.
"""

import asyncio
import concurrent.futures
import re
import threading

import nats
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError, NotFoundError

from gasworks.adapters.meters.transport import TransportError, Uplinks

log = structlog.get_logger(__name__)

STREAM_PREFIX = "GASWORKS_UPLINKS"
DURABLE = "gasworks-workers"
FETCH_BATCH = 64
FETCH_WAIT_S = 1.0
ACK_WAIT_S = 30
PUBLISH_WAIT_S = 5.0
CONNECT_WAIT_S = 10.0


def subject_prefix(topic_prefix: str) -> str:
    return topic_prefix.strip("/").replace("/", ".")


def stream_name(topic_prefix: str) -> str:
    """One work-queue stream per topic prefix (a work queue's subjects may not overlap another's)."""
    return f"{STREAM_PREFIX}_" + re.sub(r"[^A-Za-z0-9_-]", "_", topic_prefix.strip("/")).upper()


class JetStreamTransport:
    def __init__(self, servers: list[str], *, prefix: str, replicas: int = 1) -> None:
        if not servers:
            raise ValueError("at least one nats:// server")
        if not 1 <= replicas <= 5:
            raise ValueError(f"JetStream replicas are 1-5, got {replicas}")
        self.servers = servers
        self.subjects = subject_prefix(prefix)
        self.stream = stream_name(prefix)
        self.replicas = replicas
        self.uplinks = Uplinks()
        self._loop = asyncio.new_event_loop()
        self._thread: threading.Thread | None = None
        self._nc: NatsClient | None = None
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._puller: concurrent.futures.Future[None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop.run_forever, name="gasworks-jetstream", daemon=True)
        self._thread.start()
        self._puller = asyncio.run_coroutine_threadsafe(self._pull_forever(), self._loop)
        if not self._ready.wait(CONNECT_WAIT_S):
            log.warning("jetstream_not_ready_yet", servers=self.servers)

    async def _connect(self) -> NatsClient:
        async def disconnected() -> None:
            log.warning("nats_disconnected")

        async def reconnected() -> None:
            log.info("nats_reconnected", server=str(self._nc.connected_url.netloc) if self._nc and self._nc.connected_url else None)

        return await nats.connect(
            servers=self.servers, max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
            disconnected_cb=disconnected, reconnected_cb=reconnected, allow_reconnect=True,
        )  # fmt: skip

    async def _pull_forever(self) -> None:
        while not self._stopping.is_set():
            try:
                self._nc = await self._connect()
                js = self._nc.jetstream()
                config = StreamConfig(name=self.stream, subjects=[f"{self.subjects}.*.up"], retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE, num_replicas=self.replicas)
                try:
                    await js.add_stream(config)
                except BadRequestError as refused:  # there already (another worker made it: keep its config), or not placeable
                    try:
                        await js.stream_info(self.stream)
                    except NotFoundError:
                        # e.g. 3 replicas asked with a node down: a new replicated stream needs them all placed
                        raise RuntimeError(f"stream {self.stream} cannot be made: {refused.description}") from None
                pull = await js.pull_subscribe(f"{self.subjects}.*.up", durable=DURABLE, stream=self.stream, config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S))
                self._ready.set()
                log.info("jetstream_pulling", stream=self.stream, durable=DURABLE, replicas=self.replicas)
                while not self._stopping.is_set():
                    try:
                        messages = await pull.fetch(FETCH_BATCH, timeout=FETCH_WAIT_S)
                    except NatsTimeout:
                        continue
                    for message in messages:
                        parts = message.subject.split(".")
                        if len(parts) >= 3 and parts[-1] == "up":
                            await self._loop.run_in_executor(None, self.uplinks.put, parts[-2], message.data)  # back-pressure
                        await message.ack()
            except Exception as error:  # noqa: BLE001 - a node gone, a stream leader moving: pull again
                if self._stopping.is_set():
                    break
                self._ready.clear()
                log.warning("jetstream_pull_interrupted", error=f"{type(error).__name__}: {error}")
                await asyncio.sleep(0.5)

    def publish(self, serial: str, payload: bytes) -> None:
        nc = self._nc
        if nc is None or not nc.is_connected:
            raise TransportError("not connected to NATS")

        async def send() -> None:
            await nc.publish(f"{self.subjects}.{serial}.down", payload)
            await nc.flush(timeout=PUBLISH_WAIT_S)

        try:
            asyncio.run_coroutine_threadsafe(send(), self._loop).result(PUBLISH_WAIT_S + 1)
        except Exception as error:  # noqa: BLE001 - the frame did not reach a node: the command is not marked sent
            raise TransportError(f"NATS refused the frame: {type(error).__name__}") from None

    @property
    def subscribed(self) -> bool:
        return self._ready.is_set()

    def stop(self) -> None:
        """Stop pulling, close the connection, and end the loop with nothing of it left running."""
        self._stopping.set()
        if self._thread is None:
            return

        async def close() -> None:
            if self._puller is not None:
                self._puller.cancel()
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()
            others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        except Exception as error:  # noqa: BLE001 - stopping anyway
            log.warning("jetstream_stop_unclean", error=type(error).__name__)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._thread = None
        self._loop.close()
