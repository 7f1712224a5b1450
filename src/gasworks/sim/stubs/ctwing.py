"""A local CTWing platform: a real HTTP server speaking the documented northbound protocol.

What it does, as the real platform does (adapters/meters/carriers/ctwing.py cites the shapes):
- `GET /echo` answers with the platform's clock in `x-ag-timestamp` (set `clock_offset_ms` to run a
  platform whose clock is off from ours: a client that does not correct for it is refused);
- `POST /aep_device_command/command?MasterKey=...` checks the signature with its own reading of the
  SDK's string to sign (application, timestamp, sorted query parameters with MasterKey, body), the
  MasterKey, the API version and the timestamp's freshness; then caches the command for its `ttl`
  (the platform's default of 7,200 s when the body names none; 0 means "deliver now or never");
- a device's module wakes when its meter reports (`wake`): the report is pushed to the subscription
  URL, then each cached command still within its TTL goes to the meter, one at a time; a command
  past its TTL is dropped and its EXPIRED status pushed. A command created while the module still
  listens (`listen_window_s` after its report) goes at once;
- every push (dataReport with the frame base64 in payload.APPdata, commandResponse with the task's
  status, deviceOnlineOfflineReport) is POSTed as JSON and retried on anything but HTTP 200, up to
  `push_retries_max` more times. Pushes go from their own thread, never inside an API call: the
  caller of the API may be holding the very meter the push speaks of.
"""

import base64
import hashlib
import hmac
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import httpx

from gasworks.sim.meter import SimulatedMeter

API_VERSION = "20190712225145"
DEFAULT_TTL_S = 7_200
TTL_S_MAX = 864_000
TIMESTAMP_SKEW_MS_MAX = 15 * 60 * 1000
BODY_BYTES_MAX = 64 * 1024
PUSH_QUEUE_MAX = 10_000


@dataclass
class CachedCommand:
    command_id: str
    frame: bytes
    ttl_s: int
    created_at: datetime


@dataclass
class StubDevice:
    device_id: str
    product_id: str
    imei: str
    meter: SimulatedMeter
    cache: list[CachedCommand] = field(default_factory=list)
    listening_until: datetime | None = None


@dataclass
class CallRecord:
    """One call to the command API as the stub judged it (tests read these)."""

    path: str
    status: int
    code: int
    reason: str
    ttl_s: int | None = None


def sdk_string_to_sign(application: str, timestamp: str, query: list[tuple[str, str]], body: str) -> str:
    """The stub's own reading of the AEP SDK (kept apart from gasworks' client on purpose)."""
    lines = [f"application:{application}", f"timestamp:{timestamp}"]
    lines += [f"{k}:{v}" for k, v in sorted(query)]
    text = "\n".join(lines) + "\n"
    return text + (body + "\n" if body.strip() else "")


class CtwingStub:
    def __init__(
        self, *, app_key: str, app_secret: str, master_key: str, push_url: str = "",
        now: Callable[[], datetime] | None = None, clock_offset_ms: int = 0, listen_window_s: float = 20.0,
        push_retries_max: int = 3, push_retry_delay_s: float = 0.05, tenant_id: str = "10000001",
        post: Callable[[bytes], int] | None = None,
    ) -> None:  # fmt: skip
        """`post`: how a push reaches gasworks (its HTTP status back); by default an HTTP POST to `push_url`."""
        self.app_key, self.app_secret, self.master_key = app_key, app_secret, master_key
        self.push_url = push_url
        self.now = now or (lambda: datetime.now(UTC))
        self.clock_offset_ms = clock_offset_ms
        self.listen_window = timedelta(seconds=listen_window_s)
        self.push_retries_max = push_retries_max
        self.push_retry_delay_s = push_retry_delay_s
        self.tenant_id = tenant_id
        self._post = post
        self.devices: dict[str, StubDevice] = {}
        self.calls: list[CallRecord] = []
        self.pushes_sent: list[tuple[str, int]] = []  # (messageType, HTTP status) per attempt
        self.pushes_given_up = 0
        self._ids = itertools.count(1)
        self._lock = threading.RLock()
        self._pushes: queue.Queue[dict | None] = queue.Queue(maxsize=PUSH_QUEUE_MAX)
        self._idle = threading.Event()
        self._idle.set()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []

    # ---- running ----------------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if urlsplit(self.path).path != "/echo":
                    self._answer(404, {"code": 404, "msg": "not found"})
                    return
                self._answer(200, {"code": 0, "msg": "ok"}, {"x-ag-timestamp": str(stub.platform_ms())})

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("content-length") or 0)
                if length > BODY_BYTES_MAX:
                    self._answer(413, {"code": 413, "msg": "body too large"})
                    return
                body = self.rfile.read(length).decode("utf-8", errors="replace")
                status, reply = stub._command_api(urlsplit(self.path), dict(self.headers.items()), body)
                self._answer(status, reply)

            def _answer(self, status: int, reply: dict, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(reply, ensure_ascii=False).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json; charset=UTF-8")
                self.send_header("content-length", str(len(raw)))
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="ctwing-stub-http", daemon=True),
            threading.Thread(target=self._push_loop, name="ctwing-stub-push", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self.base_url

    @property
    def base_url(self) -> str:
        assert self._server is not None, "start the stub first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._pushes.put(None)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def platform_ms(self) -> int:
        return int(time.time() * 1000) + self.clock_offset_ms

    # ---- devices ----------------------------------------------------------------------------------

    def add_device(self, device_id: str, product_id: str, imei: str, meter: SimulatedMeter) -> StubDevice:
        with self._lock:
            device = self.devices[device_id] = StubDevice(device_id, product_id, imei, meter)
            return device

    def wake(self, device_id: str, *, listen: bool = True) -> None:
        """The meter reports; the platform pushes it, then hands the module what it cached for it.
        `listen=False`: the module sleeps again at once (commands created from now on wait for the next wake)."""
        with self._lock:
            device = self.devices[device_id]
            now = self.now()
            self._push_event(device, "deviceOnlineOfflineReport", eventType=1)
            self._push_frame(device, device.meter.report(now))
            device.listening_until = now + self.listen_window
            cached, device.cache = device.cache, []
            for command in cached:
                self._deliver(device, command, now)
            if not listen:
                self.sleep(device_id)

    def sleep(self, device_id: str) -> None:
        with self._lock:
            device = self.devices[device_id]
            device.listening_until = None
            device.meter.sleep()
            self._push_event(device, "deviceOnlineOfflineReport", eventType=0)

    def cached(self, device_id: str) -> list[CachedCommand]:
        with self._lock:
            return list(self.devices[device_id].cache)

    def _deliver(self, device: StubDevice, command: CachedCommand, now: datetime) -> None:
        if command.ttl_s == 0 or now >= command.created_at + timedelta(seconds=command.ttl_s):
            self._push_status(device, command, "EXPIRED")
            return
        self._push_status(device, command, "SENT")
        device.meter.awake = True
        replies = device.meter.on_downlink(command.frame)
        self._push_status(device, command, "DELIVERED")
        for reply in replies:
            self._push_frame(device, reply)

    # ---- the command API ----------------------------------------------------------------------------

    def _command_api(self, url, headers: dict[str, str], body: str) -> tuple[int, dict]:  # noqa: ANN001 - a SplitResult
        headers = {k.lower(): v for k, v in headers.items()}
        query = parse_qsl(url.query, keep_blank_values=True)

        def refuse(status: int, code: int, reason: str) -> tuple[int, dict]:
            self.calls.append(CallRecord(url.path, status, code, reason))
            return status, {"code": code, "msg": reason}

        if url.path != "/aep_device_command/command":
            return refuse(404, 404, "no such API")
        if headers.get("application") != self.app_key:
            return refuse(403, 1001, "unknown application")
        if headers.get("version") != API_VERSION:
            return refuse(400, 1002, "wrong API version")
        if headers.get("masterkey") != self.master_key or dict(query).get("MasterKey") != self.master_key:
            return refuse(403, 1003, "wrong MasterKey")
        stamp = headers.get("timestamp", "")
        if not stamp.isdigit() or abs(int(stamp) - self.platform_ms()) > TIMESTAMP_SKEW_MS_MAX:
            return refuse(403, 1004, "timestamp missing or off the platform's clock")
        expected = base64.b64encode(hmac.new(self.app_secret.encode(), sdk_string_to_sign(self.app_key, stamp, query, body).encode(), hashlib.sha1).digest()).decode()
        if not hmac.compare_digest(headers.get("signature", ""), expected):
            return refuse(403, 1005, "signature mismatch")
        try:
            doc = json.loads(body)
            device_id, content = doc["deviceId"], doc["content"]
            frame = bytes.fromhex(content["payload"]) if content.get("dataType") == 2 else content["payload"].encode()
            ttl_s = int(doc.get("ttl", DEFAULT_TTL_S))
        except (ValueError, KeyError, TypeError, AttributeError):
            return refuse(400, 1006, "body is not a CreateCommand body")
        if not 0 <= ttl_s <= TTL_S_MAX:
            return refuse(400, 1007, f"ttl must be 0 to {TTL_S_MAX}")
        with self._lock:
            device = self.devices.get(device_id)
            if device is None or str(doc.get("productId")) != device.product_id:
                return refuse(200, 8013, "device not found in product")
            now = self.now()
            command = CachedCommand(str(next(self._ids)), frame, ttl_s, now)
            self.calls.append(CallRecord(url.path, 200, 0, "ok", ttl_s))
            if device.listening_until is not None and now < device.listening_until:
                self._deliver(device, command, now)
            elif ttl_s == 0:
                self._push_status(device, command, "EXPIRED")
            else:
                device.cache.append(command)
        return 200, {"code": 0, "msg": "ok", "result": {"commandId": command.command_id, "commandStatus": "指令已保存", "deviceId": device_id, "ttl": ttl_s}}

    # ---- pushes -------------------------------------------------------------------------------------

    def _base(self, device: StubDevice, message_type: str) -> dict:
        return {"timestamp": int(self.now().timestamp() * 1000), "tenantId": self.tenant_id, "protocol": "lwm2m", "productId": device.product_id, "messageType": message_type, "deviceId": device.device_id}

    def _push_frame(self, device: StubDevice, frame: bytes) -> None:
        self._enqueue({
            **self._base(device, "dataReport"), "upPacketSN": "", "upDataSN": "", "topic": "v1/up/ad", "serviceId": "", "deviceType": "", "assocAssetId": "",
            "IMSI": "undefined", "IMEI": device.imei, "payload": {"APPdata": base64.b64encode(frame).decode()},
        })  # fmt: skip

    def _push_status(self, device: StubDevice, command: CachedCommand, code: str) -> None:
        self._enqueue({**self._base(device, "commandResponse"), "taskId": int(command.command_id), "result": {"resultCode": code, "resultDetail": ""}})

    def _push_event(self, device: StubDevice, message_type: str, **fields: object) -> None:
        self._enqueue({**self._base(device, message_type), "iccid": "undefined", **fields})

    def _enqueue(self, push: dict) -> None:
        self._idle.clear()
        self._pushes.put(push)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait until every push so far is answered 200 or given up."""
        deadline = time.monotonic() + timeout_s
        while not (self._pushes.empty() and self._idle.wait(0.01)):
            if time.monotonic() > deadline:
                raise TimeoutError("CTWing stub pushes not answered in time")
            time.sleep(0.01)

    def _push_loop(self) -> None:
        with httpx.Client(timeout=10.0) as http:

            def post(body: bytes) -> int:
                return http.post(self.push_url, content=body, headers={"content-type": "application/json"}).status_code

            send = self._post or post
            while True:
                push = self._pushes.get()
                if push is None:
                    return
                body = json.dumps(push, ensure_ascii=False, separators=(",", ":")).encode()
                for attempt in range(1 + self.push_retries_max):
                    try:
                        status = send(body)
                    except httpx.HTTPError:
                        status = 0
                    self.pushes_sent.append((push["messageType"], status))
                    if status == 200:
                        break
                    if attempt == self.push_retries_max:
                        self.pushes_given_up += 1
                    else:
                        time.sleep(self.push_retry_delay_s)
                if self._pushes.empty():
                    self._idle.set()
