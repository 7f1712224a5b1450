"""Chaos for the soak (`gasworks soak`): what it breaks and what it forges, as registries.

Three kinds of harm, each a registry so a new one is one entry:

- `PROCESS_FAULTS`: SIGKILL the API or a worker, restart the broker or PostgreSQL (`ProcessFault`);
- message faults on honest traffic: notifications lost (then resent by the channel), duplicated,
  delayed past later ones (reordered); frames between meters and gasworks dropped, duplicated and
  delayed (reordered) by `ChaoticFleet`;
- `FORGERIES`: messages an attacker or a broken peer sends (`ForgeryKind`). Each knows how to make
  one, whether gasworks refused it, and how to find its own rejection record, so the soak can prove
  "every forgery refused and recorded" by counting, per kind. A kind that needs a check not yet
  written is registered with `available=False` and shows in the table as waiting; a kind gasworks
  refuses without a record yet has `recorded_today=False` (shown, not asserted).
"""

import hashlib
import json
import random
import secrets
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

import httpx
import paho.mqtt.client as mqtt

from gasworks.adapters.channels.alipay import AlipayNotifier
from gasworks.adapters.channels.rsa import sign_sha256_rsa
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.channels.wechatpay_v3 import WechatPayV3Notifier, signed_message
from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.transport import mqtt_client, topic_down, topic_up
from gasworks.domain.meter_messages import Alarm, CurrentData, WritePurchase
from gasworks.sim.meter import SimulatedMeter

HTTP_TIMEOUT_S = 10.0
ANSWER_WAIT_S_MAX = 60.0  # an honest client retries a refused-for-now request this long, then gives up (and the soak fails)
RETRY_PAUSE_S = 0.2
UPLINKS_KEPT = 1_000  # honest uplinks remembered for replay forgeries
METERS_CHANNEL = "meters"  # where gasworks files refused meter frames (services/delivery.py)


# ---- the channels' side of honest traffic ---------------------------------------------------------


@dataclass
class ChannelKeys:
    """What the soak's channels sign with; gasworks holds the matching public keys and secrets."""

    wechat: WechatPayV3Notifier
    alipay: AlipayNotifier
    wallet: WalletClient
    device_key: str  # a kiosk's API key


@dataclass
class Sent:
    """One attempt on the wire and what came back (None: no answer, the API was away)."""

    headers: dict[str, str]
    body: bytes
    status: int | None
    reply: bytes = b""


class Api:
    """HTTP to the soak's `gasworks serve`, retrying while it is away (killed, or its database is)."""

    def __init__(self, base_url: str, *, stop: threading.Event | None = None) -> None:
        self.base_url = base_url
        self.stop = stop or threading.Event()  # set: give up retrying (the soak is over)
        self._local = threading.local()

    @property
    def client(self) -> httpx.Client:
        if getattr(self._local, "client", None) is None:
            self._local.client = httpx.Client(base_url=self.base_url, timeout=HTTP_TIMEOUT_S)
        return self._local.client

    def once(self, method: str, path: str, *, headers: dict[str, str] | None = None, body: bytes | None = None, json_body: object = None) -> tuple[int | None, bytes]:
        try:
            r = self.client.request(method, path, headers=headers, content=body, json=json_body)
            return r.status_code, r.content
        except httpx.HTTPError:
            self._local.client = None  # a killed server leaves broken keep-alive connections behind
            return None, b""

    def until_answered(self, attempt: Callable[[], Sent]) -> Sent:
        """Repeat a (re-signed) attempt until gasworks answers with anything but 5xx or silence,
        for at most `ANSWER_WAIT_S_MAX`."""
        deadline = time.monotonic() + ANSWER_WAIT_S_MAX
        while True:
            sent = attempt()
            if sent.status is not None and sent.status < 500:
                return sent
            if time.monotonic() > deadline or self.stop.wait(RETRY_PAUSE_S):
                return sent


# ---- forgeries --------------------------------------------------------------------------------------


class ForgeryContext(Protocol):
    api: Api
    keys: ChannelKeys
    rng: random.Random
    serials: list[str]

    def honest_wallet_payment(self) -> Sent: ...
    def publish_up(self, serial: str, payload: bytes) -> None: ...
    def next_id(self) -> str: ...
    def as_meter_sends(self, serial: str, message: Callable[[SimulatedMeter], CurrentData]) -> bytes: ...
    def old_uplink(self, age_s_min: float) -> tuple[str, bytes] | None: ...
    def rejections_matching(self, matches: Callable[[dict], bool]) -> int: ...


@dataclass
class Forged:
    """One forgery sent: whether gasworks refused it, and how to find its rejection record."""

    kind: str
    refused: bool | None  # None: sent over MQTT, where a refusal shows only as its rejection record
    matches: Callable[[dict], bool]
    already: int = 0  # records that matched before it was sent (a replay's original may have left some)

    def recorded_in(self, rejections: list[dict]) -> bool:
        return sum(1 for r in rejections if self.matches(r)) > self.already


@dataclass(frozen=True)
class ForgeryKind:
    name: str
    what: str
    make: Callable[[ForgeryContext], Forged] | None
    recorded_today: bool = True  # False: gasworks refuses it but keeps no rejection record yet (shown, not asserted)
    available: bool = True
    note: str = ""


def _row_text(row: dict) -> str:
    return json.dumps(row, default=str, ensure_ascii=False)


def leaves_any(*needles: str) -> Callable[[dict], bool]:
    """A rejection record is this forgery's if it names any of its unique marks anywhere (a nonce,
    a transaction id, the body's SHA-256, the frame's hex), whatever shape the record takes."""
    marks = [n for n in needles if n]
    return lambda row: any(m in _row_text(row) for m in marks)


def _sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _frame_marks(payload: bytes) -> Callable[[dict], bool]:
    return leaves_any(payload[:96].hex(), _sha256(payload))


def _refused(status: int | None) -> bool:
    """Refused: a 4xx answer (400, 401, 404, 409, 413 ... the code is the API's to choose)."""
    return status is not None and 400 <= status < 500


WALLET_PATH = "/v1/channels/wo-wallet/payments"


def _wallet_forgery(ctx: ForgeryContext, *, secret: str | None = None, at_offset_s: int = 0, body: bytes | None = None) -> tuple[Sent, str]:
    nonce = "forged" + ctx.next_id()
    client = ctx.keys.wallet if secret is None else WalletClient(key_id=ctx.keys.wallet.key_id, secret=secret)
    at = datetime.now(UTC) + timedelta(seconds=at_offset_s)
    if body is None:
        headers, body = client.payment(path=WALLET_PATH, txn_id="FG" + ctx.next_id(), account_no="4300000000", amount_fen=10_000, at=at, nonce=nonce)
    else:
        headers = client.signed_headers("POST", WALLET_PATH, body, at, nonce)
    sent = ctx.api.until_answered(lambda: Sent(headers, body, *ctx.api.once("POST", WALLET_PATH, headers=headers, body=body)))
    return sent, nonce


def forge_wallet_bad_signature(ctx: ForgeryContext) -> Forged:
    sent, nonce = _wallet_forgery(ctx, secret="not-the-wallet-secret-" + ctx.next_id())
    return Forged("wallet_bad_signature", _refused(sent.status), leaves_any(nonce, _sha256(sent.body)))


def forge_wallet_stale_timestamp(ctx: ForgeryContext) -> Forged:
    sent, nonce = _wallet_forgery(ctx, at_offset_s=-3600)
    return Forged("wallet_stale_timestamp", _refused(sent.status), leaves_any(nonce, _sha256(sent.body)))


def forge_wallet_non_utf8_body(ctx: ForgeryContext) -> Forged:
    body = b'{"txn_id": "\xff\xfe' + ctx.next_id().encode() + b'", "amount_fen": 100}'
    sent, nonce = _wallet_forgery(ctx, body=body)
    return Forged("wallet_non_utf8_body", _refused(sent.status), leaves_any(nonce, _sha256(sent.body)))


def forge_wallet_oversized_body(ctx: ForgeryContext) -> Forged:
    body = b'{"txn_id": "' + b"x" * (1024 * 1024) + b'"}'
    sent, nonce = _wallet_forgery(ctx, body=body)
    return Forged("wallet_oversized_body", sent.status == 413, leaves_any(nonce, _sha256(sent.body)))


def forge_wallet_replayed_nonce(ctx: ForgeryContext) -> Forged:
    """An honest, answered request sent again byte for byte (a captured message replayed)."""
    original = ctx.honest_wallet_payment()
    status = ctx.api.until_answered(lambda: Sent(original.headers, original.body, *ctx.api.once("POST", WALLET_PATH, headers=original.headers, body=original.body))).status
    nonce = original.headers["X-Gasworks-Nonce"]
    return Forged("wallet_replayed_nonce", _refused(status), leaves_any(nonce))


def forge_wallet_conflicting_txn_id(ctx: ForgeryContext) -> Forged:
    """A validly signed payment reusing an answered transaction id with another amount: the first
    answer stands (nothing more is booked) and the conflict is recorded for someone to look at."""
    original = ctx.honest_wallet_payment()
    first = json.loads(original.body)
    first_answer = json.loads(original.reply)
    sent = ctx.api.until_answered(lambda: _signed_wallet(ctx, txn_id=first["txn_id"], account_no=first["account_no"], amount_fen=first["amount_fen"] + 1))
    # Refused outright (409), or answered with the first payment: either way nothing more is booked.
    same_answer = sent.status == 200 and json.loads(sent.reply).get("payment_id") == first_answer.get("payment_id")
    return Forged("wallet_conflicting_txn_id", _refused(sent.status) or same_answer, leaves_any(first["txn_id"]))


def _signed_wallet(ctx: ForgeryContext, *, txn_id: str, account_no: str, amount_fen: int) -> Sent:
    headers, body = ctx.keys.wallet.payment(path=WALLET_PATH, txn_id=txn_id, account_no=account_no, amount_fen=amount_fen, at=datetime.now(UTC))
    return Sent(headers, body, *ctx.api.once("POST", WALLET_PATH, headers=headers, body=body))


def forge_wechat_tampered_body(ctx: ForgeryContext) -> Forged:
    """Signed by WeChat's key, then the body changed on the way."""
    headers, body = ctx.keys.wechat.notification(out_trade_no="GWFORGED" + ctx.next_id(), transaction_id="42FG" + ctx.next_id(), amount_fen=10_000, at=datetime.now(UTC))
    tampered = body.replace(b'"summary"', b'"Summary"')
    sent = ctx.api.until_answered(lambda: Sent(headers, tampered, *ctx.api.once("POST", "/v1/channels/wechat/notify", headers=headers, body=tampered)))
    return Forged("wechat_bad_signature", _refused(sent.status), leaves_any(headers["Wechatpay-Nonce"], _sha256(tampered)))


def forge_wechat_non_utf8_body(ctx: ForgeryContext) -> Forged:
    """Validly signed bytes that are not UTF-8 (a broken proxy, or a probe)."""
    at, nonce = str(int(time.time())), "fg" + ctx.next_id()
    body = b"\xff\xfe\xfd not json " + ctx.next_id().encode()
    headers = {
        "Content-Type": "application/json", "Wechatpay-Serial": ctx.keys.wechat.serial, "Wechatpay-Timestamp": at, "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": sign_sha256_rsa(ctx.keys.wechat.platform_private_key_pem, signed_message(at, nonce, body)),
    }  # fmt: skip
    sent = ctx.api.until_answered(lambda: Sent(headers, body, *ctx.api.once("POST", "/v1/channels/wechat/notify", headers=headers, body=body)))
    return Forged("wechat_non_utf8_body", _refused(sent.status), leaves_any(nonce, _sha256(body)))


def forge_alipay_bad_signature(ctx: ForgeryContext) -> Forged:
    trade_no = "2026FG" + ctx.next_id()
    headers, body = ctx.keys.alipay.notification(out_trade_no="GWFORGED" + ctx.next_id(), trade_no=trade_no, amount_fen=10_000, at=datetime.now(UTC))
    tampered = body.replace(b"total_amount=100.00", b"total_amount=900.00")
    sent = ctx.api.until_answered(lambda: Sent(headers, tampered, *ctx.api.once("POST", "/v1/channels/alipay/notify", headers=headers, body=tampered)))
    refused = _refused(sent.status) or (sent.status == 200 and sent.reply == b"failure")  # Alipay hears "failure"
    return Forged("alipay_bad_signature", refused, leaves_any(trade_no, _sha256(tampered)))


def forge_unknown_channel(ctx: ForgeryContext) -> Forged:
    channel_id = "forged-" + ctx.next_id()
    sent = ctx.api.until_answered(lambda: Sent({}, b"{}", *ctx.api.once("POST", f"/v1/channels/{channel_id}/notify", headers={"Content-Type": "application/json"}, body=b"{}")))
    return Forged("unknown_channel", _refused(sent.status), leaves_any(channel_id))


def _unique_litres(ctx: ForgeryContext) -> int:
    return 10_000_000 + int(ctx.next_id())


def forge_malformed_frame(ctx: ForgeryContext) -> Forged:
    payload = b"\x68\x30" + secrets.token_bytes(4) + ctx.next_id().encode() + b"\x16"
    ctx.publish_up(ctx.rng.choice(ctx.serials), payload)
    return Forged("malformed_frame", None, _frame_marks(payload))


def forge_foreign_frame(ctx: ForgeryContext) -> Forged:
    """A well-formed report for one meter, published on another meter's topic."""
    serial, topic_serial = ctx.rng.sample(ctx.serials, 2)
    payload = cjt188.encode(CurrentData(serial, 1, _unique_litres(ctx), 0, 0, True, 3_600, Alarm(0), datetime(2026, 1, 1)))
    ctx.publish_up(topic_serial, payload)
    return Forged("foreign_frame", None, _frame_marks(payload))


def forge_downlink_sent_up(ctx: ForgeryContext) -> Forged:
    """A 'write purchase' command, which only gasworks sends, arriving from a meter."""
    serial = ctx.rng.choice(ctx.serials)
    payload = cjt188.encode(WritePurchase(serial, 1, 1, _unique_litres(ctx)))
    ctx.publish_up(serial, payload)
    return Forged("downlink_sent_up", None, _frame_marks(payload))


def forge_unknown_meter(ctx: ForgeryContext) -> Forged:
    serial = f"{99_000_000_000_000 + int(ctx.next_id()):014d}"
    payload = cjt188.encode(CurrentData(serial, 1, _unique_litres(ctx), 0, 0, True, 3_600, Alarm(0), datetime(2026, 1, 1)))
    ctx.publish_up(serial, payload)
    return Forged("unknown_meter", None, _frame_marks(payload))


FORGED_CLAIM_SEQ_MIN = 1_000  # forged claims start here, far past anything a soak issues


def forge_serial_above_issued(ctx: ForgeryContext) -> Forged:
    """A report from a real meter claiming it applied a purchase serial gasworks never issued."""
    serial, n = ctx.rng.choice(ctx.serials), int(ctx.next_id())
    payload = ctx.as_meter_sends(serial, lambda m: CurrentData(serial, 1, m.cumulative_litres, m.credit_litres, m.applied_seq + FORGED_CLAIM_SEQ_MIN + n, m.valve_open, m.battery_mv, Alarm(0), datetime(2026, 1, 1)))
    ctx.publish_up(serial, payload)
    return Forged("serial_above_issued", None, _frame_marks(payload))


REPLAY_AGE_S_MIN = 4.0  # the original was heard (and its counter taken) well before it is replayed


def forge_replayed_frame(ctx: ForgeryContext) -> Forged:
    """A meter's earlier frame, captured on the wire and sent again: its counter is used up."""
    deadline = time.monotonic() + 3 * REPLAY_AGE_S_MIN
    while (found := ctx.old_uplink(REPLAY_AGE_S_MIN)) is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no meter has sent a frame for {3 * REPLAY_AGE_S_MIN:.0f} s: nothing to replay")
        time.sleep(RETRY_PAUSE_S)
    serial, payload = found
    matches = _frame_marks(payload)
    already = ctx.rejections_matching(matches)  # the original may have been refused too (a duplicate, or heard by two workers)
    ctx.publish_up(serial, payload)
    return Forged("frame_replayed_counter", None, matches, already)


def forge_bad_mac(ctx: ForgeryContext) -> Forged:
    """A report sealed by the meter, one MAC byte changed and the checksum made right again."""
    serial, litres = ctx.rng.choice(ctx.serials), _unique_litres(ctx)
    sealed = ctx.as_meter_sends(serial, lambda m: CurrentData(serial, 1, litres, m.credit_litres, m.applied_seq, m.valve_open, m.battery_mv, Alarm(0), datetime(2026, 1, 1)))
    start = len(sealed) - len(sealed.lstrip(b"\xfe"))  # after the wake-up bytes
    frame = bytearray(sealed)
    frame[-3] ^= 1 + ctx.rng.randrange(255)  # the MAC's last byte, never unchanged
    frame[-2] = sum(frame[start:-2]) % 256
    payload = bytes(frame)
    ctx.publish_up(serial, payload)
    return Forged("frame_bad_mac", None, _frame_marks(payload))


FORGERIES: dict[str, ForgeryKind] = {
    k.name: k
    for k in (
        ForgeryKind("wallet_bad_signature", "wallet payment signed with the wrong secret", forge_wallet_bad_signature),
        ForgeryKind("wallet_stale_timestamp", "wallet payment signed an hour ago (a late replay)", forge_wallet_stale_timestamp),
        ForgeryKind("wallet_replayed_nonce", "an answered wallet payment replayed byte for byte", forge_wallet_replayed_nonce),
        ForgeryKind("wallet_conflicting_txn_id", "an answered transaction id again, another amount", forge_wallet_conflicting_txn_id),
        ForgeryKind("wallet_non_utf8_body", "validly signed body that is not UTF-8", forge_wallet_non_utf8_body),
        ForgeryKind("wallet_oversized_body", "a 1 MiB body (limit 64 KiB)", forge_wallet_oversized_body),
        ForgeryKind("wechat_bad_signature", "WeChat Pay notification altered after signing", forge_wechat_tampered_body),
        ForgeryKind("wechat_non_utf8_body", "WeChat Pay notification, signed bytes not UTF-8", forge_wechat_non_utf8_body),
        ForgeryKind("alipay_bad_signature", "Alipay notification with its amount altered", forge_alipay_bad_signature),
        ForgeryKind("unknown_channel", "a notification to a channel that does not exist", forge_unknown_channel),
        ForgeryKind("malformed_frame", "garbage bytes on a meter's uplink topic", forge_malformed_frame),
        ForgeryKind("foreign_frame", "a report for one meter on another meter's topic", forge_foreign_frame),
        ForgeryKind("downlink_sent_up", "a 'write purchase' frame sent by a meter", forge_downlink_sent_up),
        ForgeryKind("unknown_meter", "a report from a meter gasworks never issued", forge_unknown_meter),
        ForgeryKind("frame_bad_mac", "a meter's sealed report with one MAC byte changed", forge_bad_mac),
        ForgeryKind("frame_replayed_counter", "a meter's earlier frame sent again (old counter)", forge_replayed_frame),
        ForgeryKind("serial_above_issued", "a meter's sealed report claiming a purchase serial never issued", forge_serial_above_issued),
    )
}  # fmt: skip


# ---- process faults -----------------------------------------------------------------------------------


class FaultTarget(Protocol):
    def kill_api(self) -> str: ...
    def kill_worker(self, rng: random.Random) -> str: ...
    def restart_broker(self) -> str: ...
    def restart_postgres(self) -> str: ...


@dataclass(frozen=True)
class ProcessFault:
    name: str
    inject: Callable[[FaultTarget, random.Random], str]  # returns what it did, for the log


PROCESS_FAULTS: dict[str, ProcessFault] = {
    f.name: f
    for f in (
        ProcessFault("api killed (SIGKILL)", lambda t, rng: t.kill_api()),
        ProcessFault("worker killed (SIGKILL)", lambda t, rng: t.kill_worker(rng)),
        ProcessFault("broker restarted", lambda t, rng: t.restart_broker()),
        ProcessFault("postgres crashed and restarted", lambda t, rng: t.restart_postgres()),
    )
}


# ---- notification faults on honest payments ----------------------------------------------------------


NOTIFICATION_FATES = ("on time", "lost, then resent", "duplicated", "delayed (reordered)")
NOTIFICATION_FATE_WEIGHTS = (70, 10, 10, 10)


# ---- meters on the broker, with frames dropped, duplicated and delayed ------------------------------


@dataclass
class FrameChaos:
    """Which frames to harm, by their number (deterministic for a count of frames): every
    `drop_every`-th is dropped, every `duplicate_every`-th doubled, every `delay_every`-th held back
    so later frames overtake it."""

    drop_every: int = 13
    duplicate_every: int = 11
    delay_every: int = 7
    delay_s: tuple[float, float] = (0.2, 1.5)
    on: bool = True


class ChaoticFleet:
    """Simulated meters (real firmware behaviour, sealed frames) on the soak's broker, as the `fleet`
    user; downlinks they hear and uplinks they send pass through `FrameChaos`."""

    def __init__(self, url: str, *, prefix: str, meters: list[SimulatedMeter], chaos: FrameChaos, rng: random.Random) -> None:
        self.prefix = prefix
        self.meters = {m.serial: m for m in meters}
        self.chaos = chaos
        self.rng = rng
        self.faults: Counter = Counter()
        self.frames = Counter()  # "down" / "up": frames seen, for the numbering
        self._lock = threading.RLock()
        self._subscribed = threading.Event()
        self.client = mqtt_client(url, f"soak-fleet-{uuid.uuid4().hex[:8]}")
        self.client.on_connect = lambda c, *a: c.subscribe(topic_down(prefix, "+"), qos=1)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self._timers: list[threading.Timer] = []
        self._published: deque[tuple[float, str, bytes]] = deque(maxlen=UPLINKS_KEPT)  # (when, meter, frame), for replays

    def start(self) -> None:
        host, port = self.client._gasworks_address  # type: ignore[attr-defined]
        self.client.connect(host, port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(10):
            raise TimeoutError("the soak's meters could not subscribe within 10 s")

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        self.client.disconnect()
        self.client.loop_stop()

    def _fate(self, direction: str) -> str:
        with self._lock:
            self.frames[direction] += 1
            n = self.frames[direction]
            if not self.chaos.on:
                return "on time"
            c = self.chaos
            if n % c.drop_every == 0:
                fate = "dropped"
            elif n % c.duplicate_every == 0:
                fate = "duplicated"
            elif n % c.delay_every == 0:
                fate = "delayed (reordered)"
            else:
                return "on time"
            self.faults[f"{'downlink' if direction == 'down' else 'uplink'} frame {fate}"] += 1
            return fate

    def _later(self, action: Callable[[], None]) -> None:
        with self._lock:
            delay_s = self.rng.uniform(*self.chaos.delay_s)
            timer = threading.Timer(delay_s, action)
            timer.daemon = True
            self._timers = [t for t in self._timers if t.is_alive()]
            self._timers.append(timer)
        timer.start()

    def _on_message(self, client: mqtt.Client, userdata: object, message: mqtt.MQTTMessage) -> None:
        serial = message.topic.split("/")[-2]
        if serial not in self.meters:
            return
        payload = bytes(message.payload)
        fate = self._fate("down")
        if fate == "dropped":
            return
        if fate == "delayed (reordered)":
            self._later(lambda: self._hear(serial, payload))
            return
        self._hear(serial, payload)
        if fate == "duplicated":
            self._hear(serial, payload)

    def _hear(self, serial: str, payload: bytes) -> None:
        with self._lock:
            replies = self.meters[serial].on_downlink(payload)
        for reply in replies:
            self._send(serial, reply)

    def _send(self, serial: str, frame: bytes) -> None:
        fate = self._fate("up")
        if fate == "dropped":
            return
        if fate == "delayed (reordered)":
            self._later(lambda: self._publish_honest(serial, frame))
            return
        self._publish_honest(serial, frame)
        if fate == "duplicated":
            self._publish_honest(serial, frame)

    def publish_up(self, serial: str, frame: bytes) -> None:
        self.client.publish(topic_up(self.prefix, serial), frame, qos=1)

    def as_meter_sends(self, serial: str, message: Callable[[SimulatedMeter], CurrentData]) -> bytes:
        """A message encoded as this meter encodes it (sealed with its key, its next counter, where
        meters hold keys): a forgery that passes every check but the one it probes."""
        with self._lock:
            meter = self.meters[serial]
            encode = getattr(meter, "_encode", None) or cjt188.encode
            return encode(message(meter))

    def old_uplink(self, age_s_min: float) -> tuple[str, bytes] | None:
        """The newest honest uplink put on the wire at least `age_s_min` ago, with its meter."""
        cutoff = time.monotonic() - age_s_min
        with self._lock:
            old = [(at, serial, frame) for at, serial, frame in self._published if at <= cutoff]
        return max(old)[1:] if old else None

    def _publish_honest(self, serial: str, frame: bytes) -> None:
        with self._lock:
            self._published.append((time.monotonic(), serial, frame))
        self.publish_up(serial, frame)

    def report(self, serial: str) -> None:
        """The meter wakes and reports (and stays listening)."""
        with self._lock:
            frame = self.meters[serial].report(datetime.now(UTC))
        self._send(serial, frame)

    def applied(self) -> dict[str, list[tuple[int, int]]]:
        """What each meter has really applied, (purchase serial, litres) in order."""
        with self._lock:
            return {s: list(m.applied) for s, m in self.meters.items()}


@dataclass
class Books:
    """The soak's own books, kept apart from gasworks': what it sent and what it was told."""

    honest_sent: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, txn id) -> fen
    honest_answered: dict[tuple[str, str], str] = field(default_factory=dict)  # -> payment id in the answer
    honest_refused: list[str] = field(default_factory=list)  # refused, or a retry answered with another payment
    forged: list[Forged] = field(default_factory=list)
    faults: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)
