"""CTWing (China Telecom AIoT, 天翼物联 AEP): the northbound command API, signed as its SDK signs, and its pushes.

Outbound (what the official AEP SDKs do: Python `apis/core/AepSdkRequestSend.py`, Go `core`, PHP
`AepSdkCore`; API `aep_device_command` CreateCommand, version 20190712225145):

    POST {base}/aep_device_command/command?MasterKey={MasterKey}
    headers: MasterKey, application (the app key), timestamp (ms, corrected by the platform's
             clock offset), version, signature, Date, Content-Type: application/json; charset=UTF-8
    signature = Base64(HMAC-SHA1(appSecret,
                  "application:{app key}\\n" "timestamp:{timestamp}\\n"
                  + "{k}:{v}\\n" for every query parameter, MasterKey included, sorted by name
                  + "{body}\\n" when there is a body))
    body: {"content": {"payload": "<hex of the frame>", "dataType": 2}, "deviceId", "operator",
           "productId", "ttl", "level": 1}
    answer: {"code": 0, "msg": "ok", "result": {"commandId", "commandStatus", ...}}

The clock offset is the SDKs': GET {base}/echo, offset = x-ag-timestamp - (sent + received) / 2;
when that header is missing, the Date header of the same answer (to the second).

Inbound pushes (subscription, HTTP POST of one JSON object; CTWing signs nothing, so the URL holds a
secret; anything but HTTP 200 is retried):

    dataReport:  {"messageType": "dataReport", "deviceId", "productId", "tenantId", "IMEI", "IMSI",
                  "timestamp": ms, "protocol", "topic", "upPacketSN", "upDataSN", "serviceId",
                  "payload": {"APPdata": "<base64 of the device's bytes>"}}
    commandResponse: {"messageType": "commandResponse", "deviceId", "productId", "timestamp",
                  "taskId", "result": {"resultCode": "SENT|DELIVERED|...", "resultDetail"}}
    deviceOnlineOfflineReport: {"messageType": ..., "deviceId", "productId", "timestamp",
                  "eventType": 1 online | 0 offline}

A push carries no message id, so a retry is recognised by the SHA-256 of what it says (message
type, device, platform timestamp, and the payload, task status or event).
"""

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING

import httpx
import structlog

from gasworks.adapters.meters import cjt188
from gasworks.adapters.meters.transport import TransportError
from gasworks.domain.carriers import (
    DEVICE_ID_CHARS_MAX,
    PRODUCT_ID_CHARS_MAX,
    CarrierDevice,
    CarrierPlatform,
    CarrierPush,
    PlatformCommand,
    PlatformCommandStatus,
    PushKind,
    command_ttl_s,
    platform_status,
)
from gasworks.domain.errors import GasworksError, InvalidInput, MalformedFrame

if TYPE_CHECKING:
    from gasworks.services.unit_of_work import UnitOfWork

log = structlog.get_logger(__name__)

CREATE_COMMAND_PATH = "/aep_device_command/command"
CREATE_COMMAND_VERSION = "20190712225145"
ECHO_PATH = "/echo"
TIME_HEADER = "x-ag-timestamp"
DATA_TYPE_HEX = 2  # content.dataType: 1 a string, 2 hex digits
COMMAND_LEVEL_DEVICE = 1
REQUEST_TIMEOUT_S = 10.0
CLOCK_SYNC_EVERY_S = 3600  # the platform's clock offset is measured again this often (and after any refusal)
APPDATA_CHARS_MAX = 4 * ((cjt188.FRAME_BYTES_MAX + 2) // 3) + 4  # base64 of the largest frame
TASK_ID_CHARS_MAX = 64
STATUS_TEXT_CHARS_MAX = 40


def string_to_sign(*, application: str, timestamp_ms: str, params: dict[str, str], body: str) -> str:
    """Exactly what the AEP SDKs sign: the application, the timestamp, every query parameter (MasterKey
    among them) as key:value sorted by key, then the body, each line ending in a newline."""
    text = f"application:{application}\ntimestamp:{timestamp_ms}\n"
    for key, value in sorted(params.items()):
        text += f"{key}:{value}\n"
    if body.strip():
        text += body + "\n"
    return text


def signature(app_secret: str, text: str) -> str:
    return base64.b64encode(hmac.new(app_secret.encode(), text.encode(), hashlib.sha1).digest()).decode()


@dataclass(frozen=True)
class CtwingCredentials:
    base_url: str  # https://ag-api.ctwing.cn
    app_key: str  # the "application" header
    app_secret: str  # signs; never sent
    master_key: str  # the product's MasterKey


@dataclass(frozen=True)
class CommandCreated:
    command_id: str
    status_text: str


class CtwingClient:
    """The northbound API over httpx: signs each call; keeps the platform's clock offset."""

    def __init__(self, credentials: CtwingCredentials, *, timeout_s: float = REQUEST_TIMEOUT_S, now_ms: Callable[[], int] | None = None) -> None:
        self.credentials = credentials
        self._http = httpx.Client(base_url=credentials.base_url.rstrip("/"), timeout=timeout_s)
        self._now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.offset_ms: int | None = None  # None until the first successful sync
        self.synced_at = float("-inf")  # time.monotonic() of the last sync

    def close(self) -> None:
        self._http.close()

    def sync_clock(self) -> int:
        """The platform's clock minus ours, in ms, as the SDKs measure it (midpoint of the round trip)."""
        sent = self._now_ms()
        try:
            answer = self._http.get(ECHO_PATH)
        except httpx.HTTPError as error:
            raise TransportError(f"CTWing time API unreachable: {error}") from None
        received = self._now_ms()
        platform_ms = _platform_time_ms(answer.headers)
        if platform_ms is None:
            raise TransportError("CTWing time API gave neither x-ag-timestamp nor Date")
        self.offset_ms = platform_ms - (sent + received) // 2
        self.synced_at = time.monotonic()
        return self.offset_ms

    def signed_headers(self, *, params: dict[str, str], body: str, version: str) -> dict[str, str]:
        if self.offset_ms is None or time.monotonic() - self.synced_at > CLOCK_SYNC_EVERY_S:
            self.sync_clock()
        creds = self.credentials
        timestamp_ms = str(self._now_ms() + (self.offset_ms or 0))
        text = string_to_sign(application=creds.app_key, timestamp_ms=timestamp_ms, params=params, body=body)
        return {
            "MasterKey": creds.master_key,
            "application": creds.app_key,
            "timestamp": timestamp_ms,
            "version": version,
            "signature": signature(creds.app_secret, text),
            "Date": datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT"),
            "Content-Type": "application/json; charset=UTF-8",
        }

    def create_command(self, *, device_id: str, product_id: str, frame: bytes, ttl_s: int, operator: str) -> CommandCreated:
        """Hand one frame to the platform, cached for `ttl_s` until the module wakes. Raises TransportError."""
        body = json.dumps(
            {
                "content": {"payload": frame.hex().upper(), "dataType": DATA_TYPE_HEX},
                "deviceId": device_id,
                "operator": operator,
                "productId": int(product_id) if product_id.isdigit() else product_id,
                "ttl": ttl_s,
                "level": COMMAND_LEVEL_DEVICE,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )
        params = {"MasterKey": self.credentials.master_key}
        headers = self.signed_headers(params=params, body=body, version=CREATE_COMMAND_VERSION)
        try:
            answer = self._http.post(CREATE_COMMAND_PATH, params=params, content=body.encode(), headers=headers)
        except httpx.HTTPError as error:
            raise TransportError(f"CTWing unreachable: {error}") from None
        if answer.status_code != 200:
            self.offset_ms = None
            raise TransportError(f"CTWing answered HTTP {answer.status_code}: {answer.text[:200]}")
        try:
            reply = answer.json()
            code, result = reply.get("code"), reply.get("result") or {}
            command_id = str(result.get("commandId", ""))
        except (ValueError, AttributeError):
            raise TransportError(f"CTWing answered something that is not its JSON: {answer.text[:200]}") from None
        if code != 0 or not command_id or len(command_id) > TASK_ID_CHARS_MAX:
            self.offset_ms = None  # a refusal may be our clock drifting from the platform's: measure again next time
            raise TransportError(f"CTWing refused the command: code {code}, {str(reply.get('msg', ''))[:200]}")
        return CommandCreated(command_id, str(result.get("commandStatus", ""))[:STATUS_TEXT_CHARS_MAX])


def _platform_time_ms(headers: httpx.Headers) -> int | None:
    stamp = headers.get(TIME_HEADER, "")
    if stamp.isdigit():
        return int(stamp)
    try:
        return int(parsedate_to_datetime(headers.get("date", "")).timestamp() * 1000)
    except (TypeError, ValueError):
        return None


# ---- inbound pushes -----------------------------------------------------------------------------


class MalformedPush(GasworksError):
    """A push that is not CTWing's JSON shape: the platform or someone else sent nonsense."""

    code = "MALFORMED_PUSH"
    http_status = 400


def _text(value: object, name: str, chars_max: int) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MalformedPush(f"{name} must be a string")
    text = str(value)
    if not text or len(text) > chars_max or not text.isprintable():
        raise MalformedPush(f"{name} must be 1 to {chars_max} printable characters")
    return text


def read_pushed_frame(frame: bytes) -> dict:
    """A pushed meter frame read where the push arrives (`cjt188.read_uplink`), as the push's fields.
    One that cannot be read keeps why: it is refused under the device's meter once the device is
    known (services/carriers.py), as any unreadable frame is."""
    try:
        return {"uplink": cjt188.read_uplink(frame)}
    except MalformedFrame as error:
        return {"frame_unreadable": (error.code, error.message)}


def parse_push(body: bytes) -> CarrierPush:
    """One CTWing push, parsed and bounded; MalformedPush when it is not the platform's shape."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise MalformedPush("a CTWing push is one JSON object") from None
    if not isinstance(doc, dict):
        raise MalformedPush("a CTWing push is one JSON object")
    message_type = _text(doc.get("messageType"), "messageType", 40)
    device_id = _text(doc.get("deviceId"), "deviceId", DEVICE_ID_CHARS_MAX)
    product_id = _text(doc.get("productId", "-"), "productId", PRODUCT_ID_CHARS_MAX)
    timestamp_ms = doc.get("timestamp")
    if isinstance(timestamp_ms, bool) or not isinstance(timestamp_ms, int) or not 0 <= timestamp_ms < 10**14:
        raise MalformedPush("timestamp must be milliseconds since 1970")
    try:
        kind = PushKind(message_type)
    except ValueError:
        kind = PushKind.OTHER
    fields: dict = {}
    said = ""
    if kind == PushKind.DATA_REPORT:
        payload = doc.get("payload")
        appdata = payload.get("APPdata") if isinstance(payload, dict) else None
        if not isinstance(appdata, str) or not appdata or len(appdata) > APPDATA_CHARS_MAX:
            raise MalformedPush(f"a dataReport carries payload.APPdata, base64 of at most {cjt188.FRAME_BYTES_MAX} bytes")
        try:
            frame = base64.b64decode(appdata, validate=True)
        except (binascii.Error, ValueError):
            raise MalformedPush("payload.APPdata is not base64") from None
        fields = {"frame": frame, **read_pushed_frame(frame)}
        said = appdata
    elif kind == PushKind.COMMAND_RESPONSE:
        task_id = _text(doc.get("taskId"), "taskId", TASK_ID_CHARS_MAX)
        result = doc.get("result")
        code = result.get("resultCode") if isinstance(result, dict) else None
        status_text = _text(code, "result.resultCode", STATUS_TEXT_CHARS_MAX)
        fields = {"task_id": task_id, "status": platform_status(status_text), "status_text": status_text}
        said = f"{task_id}:{status_text}"
    elif kind == PushKind.ONLINE_OFFLINE:
        event = doc.get("eventType")
        if event not in (0, 1, "0", "1"):
            raise MalformedPush("eventType is 1 (online) or 0 (offline)")
        fields = {"online": str(event) == "1"}
        said = str(event)
    digest = hashlib.sha256(f"{message_type}\n{device_id}\n{timestamp_ms}\n{said}".encode()).hexdigest()
    return CarrierPush(CarrierPlatform.CTWING, kind, message_type, device_id, product_id, timestamp_ms, digest, **fields)


# ---- the meter transport for meters on CTWing ---------------------------------------------------


class CtwingSender:
    """Sends a meter's command through CTWing: one platform command per frame, cached for the meter's
    report interval plus a margin (never the platform's 7,200 s default), recorded in the sender's
    unit of work so the platform's status pushes find the meter command they speak of."""

    def __init__(self, client: CtwingClient, *, ttl_margin_s: int, operator: str = "gasworks") -> None:
        self.client = client
        self.ttl_margin_s = ttl_margin_s
        self.operator = operator

    def send(self, device: CarrierDevice, frame: bytes, uow: "UnitOfWork") -> PlatformCommand | None:
        """The platform command created, or None when the same command is still cached there."""
        now = uow.clock.now()
        try:
            frame_seq = cjt188.decode_frame(frame).data[2]
        except (MalformedFrame, IndexError):
            raise TransportError("not a frame gasworks made: nothing sent") from None
        cached = uow.carriers.latest_command(device.serial, frame_seq)
        if cached is not None and cached.still_cached(now):
            return None  # a copy would only queue behind it on the platform and reach the meter twice
        try:
            ttl_s = command_ttl_s(device.report_interval_s, ttl_margin_s=self.ttl_margin_s)
        except InvalidInput as error:
            raise TransportError(f"meter {device.serial}: {error.message}") from None
        created = self.client.create_command(device_id=device.device_id, product_id=device.product_id, frame=frame, ttl_s=ttl_s, operator=self.operator)
        status = platform_status(created.status_text) or PlatformCommandStatus.SAVED
        command = PlatformCommand(CarrierPlatform.CTWING, created.command_id, device.serial, frame_seq, ttl_s, now, status, now)
        uow.carriers.add_command(command)
        log.info("ctwing_command_created", meter=device.serial, command_id=created.command_id, ttl_s=ttl_s, frame_seq=frame_seq)
        return command
