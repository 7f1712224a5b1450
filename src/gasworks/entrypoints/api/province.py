"""One deployment for a province: each request goes to its city's API, on its city's database.

A request says its city in one of four ways, tried in this order:
- its path starts with /cities/<code>/ (the URLs each city gives out: channels' notify URLs,
  carriers' push URLs, resident links, kiosks' base URL);
- its path names a channel, /v1/channels/<id>/…: each channel belongs to one city (the province file);
- its path names an account, /v1/accounts/<no>… or /v1/devices/accounts/<no>: the number's first
  four digits are the city;
- its JSON body names one (POST /v1/accounts, /v1/orders, /v1/devices/payments): `account_no`.

Anything else belongs to no one city and is refused with 404 CITY_REQUIRED, naming the prefixed
path to use. The path each city's API sees, and the one a channel signed, is left as it came; the
city's prefix is the root path, so the links a city writes carry it.

One city's database down or slow stops that city only: its requests are answered 503 by its own
API (TRY_AGAIN_LATER), at most `province_city_requests_max` of them are in flight at once (more are
answered 503 CITY_BUSY at once), so a stuck city cannot take the threads every city shares; and for
`province_city_rest_s` after a 503 the city's requests are answered 503 TRY_AGAIN_LATER by the router
itself (a circuit breaker), so a storm of channel retries costs neither the dead database's
connection attempts nor the others' CPU.
"""

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

import structlog
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gasworks.bootstrap import System, bootstrap
from gasworks.config import ProvinceConfig, Settings
from gasworks.domain.accounts import check_account_no
from gasworks.domain.errors import GasworksError, InvalidInput, NotFound, PayloadTooLarge
from gasworks.domain.province import Province
from gasworks.entrypoints.api.app import create_app
from gasworks.services import checks

log = structlog.get_logger(__name__)

HEALTH_ANSWER_WITHIN_S = 3.0
ACCOUNT_IN_BODY_PATHS = frozenset({"/v1/accounts", "/v1/orders", "/v1/devices/payments"})

province_refusals = Counter("gasworks_province_refusals_total", "Requests the province router could not give to a city, by code.", ["code"])
city_requests_refused_resting = Counter("gasworks_province_city_resting_total", "Requests answered 503 at once because their city's database had just failed one, by city.", ["city"])
city_requests_refused_busy = Counter("gasworks_province_city_busy_total", "Requests refused because their city had too many in flight, by city.", ["city"])


class CityBusy(GasworksError):
    code = "CITY_BUSY"
    http_status = 503


class CityResting(GasworksError):
    """Its database just failed a request: the city is left alone for a moment (a circuit breaker)."""

    code = "TRY_AGAIN_LATER"
    http_status = 503


@dataclass
class Routed:
    code: str
    receive: Receive


class ProvinceRouter:
    """Pure ASGI: picks the city, bounds its requests in flight, hands the request to its API."""

    def __init__(self, province: Province, apps: Mapping[str, ASGIApp], systems: Mapping[str, System], *, body_bytes_max: int, city_requests_max: int, city_rest_s: float = 0.0) -> None:
        self.province = province
        self.apps = apps
        self.systems = systems
        self.body_bytes_max = body_bytes_max
        self.city_requests_max = city_requests_max
        self.in_flight = dict.fromkeys(apps, 0)
        self.city_rest_s = city_rest_s  # after a city answers 503, its next requests are answered 503 at once for this long
        self.resting_until = dict.fromkeys(apps, 0.0)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        if path == "/healthz":
            await self._health(send)
            return
        if path == "/metrics":
            await _answer(send, 200, generate_latest(), CONTENT_TYPE_LATEST)
            return
        try:
            routed = await self._route(scope, receive)
            if time.monotonic() < self.resting_until[routed.code]:
                city_requests_refused_resting.labels(routed.code).inc()
                raise CityResting(f"city {routed.code}'s database could not answer a moment ago; nothing was taken: send it again")
            if self.in_flight[routed.code] >= self.city_requests_max:
                city_requests_refused_busy.labels(routed.code).inc()
                raise CityBusy(f"city {routed.code} has {self.city_requests_max} requests in flight: its database is slow or down; send it again")
        except GasworksError as error:
            province_refusals.labels(error.code).inc()
            log.info("province_refused", path=path[:200], code=error.code, message=error.message[:300])
            headers = [(b"retry-after", b"5")] if error.http_status == 503 else []
            await _answer(send, error.http_status, json.dumps({"error": {"code": error.code, "message": error.message}}).encode(), "application/json", headers)
            return
        code = routed.code

        async def send_watched(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 503 and self.city_rest_s > 0:
                self.resting_until[code] = time.monotonic() + self.city_rest_s
            await send(message)

        self.in_flight[routed.code] += 1
        try:
            await self.apps[routed.code]({**scope, "root_path": scope.get("root_path", "") + f"/cities/{routed.code}"}, routed.receive, send_watched)
        finally:
            self.in_flight[routed.code] -= 1

    async def _route(self, scope: Scope, receive: Receive) -> Routed:
        path: str = scope["path"]
        parts = path.split("/")
        if len(parts) >= 4 and parts[1] == "cities":  # /cities/<code>/…
            code = self.province.city(parts[2]).code
            if "/" + "/".join(parts[3:]) in ACCOUNT_IN_BODY_PATHS and scope["method"] == "POST":
                body = await self._read_body(scope, receive)
                if self._city_of_account(_account_in(body)) != code:
                    raise InvalidInput(f"the account number names another city than {code}: send it to that city", code="ACCOUNT_OF_ANOTHER_CITY")
                return Routed(code, _replay(body))
            return Routed(code, receive)
        if len(parts) >= 4 and parts[1:3] == ["v1", "channels"]:
            return Routed(self.province.city_of_channel(parts[3]).code, receive)
        if len(parts) >= 4 and parts[1:3] == ["v1", "accounts"]:
            return Routed(self._city_of_account(parts[3]), receive)
        if len(parts) >= 5 and parts[1:4] == ["v1", "devices", "accounts"]:
            return Routed(self._city_of_account(parts[4]), receive)
        if path in ACCOUNT_IN_BODY_PATHS and scope["method"] == "POST":
            body = await self._read_body(scope, receive)
            return Routed(self._city_of_account(_account_in(body)), _replay(body))
        raise NotFound(f"{path[:200]} belongs to one city: send it to /cities/<code>{path[:200]} (cities: {', '.join(c.code for c in self.province.cities)})", code="CITY_REQUIRED")

    def _city_of_account(self, account_no: str) -> str:
        return self.province.city_of_account(check_account_no(account_no)).code

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        body = bytearray()
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.body_bytes_max):
                raise PayloadTooLarge(f"request body over {self.body_bytes_max} bytes")
        while True:
            message = await receive()
            body.extend(message.get("body", b""))
            if len(body) > self.body_bytes_max:
                raise PayloadTooLarge(f"request body over {self.body_bytes_max} bytes")
            if not message.get("more_body", False):
                return bytes(body)

    async def _health(self, send: Send) -> None:
        async def one(code: str) -> str:
            try:
                await asyncio.wait_for(run_in_threadpool(_database_answers, self.systems[code]), HEALTH_ANSWER_WITHIN_S)
            except Exception:  # noqa: BLE001 - any failure of one city's database makes that city unavailable, and only it
                return "unavailable"
            return "ok"

        states = dict(zip(self.apps, await asyncio.gather(*(one(code) for code in self.apps)), strict=True))
        up = sum(1 for state in states.values() if state == "ok")
        status = "ok" if up == len(states) else "degraded" if up else "down"
        await _answer(send, 200 if up else 503, json.dumps({"status": status, "cities": states}).encode(), "application/json")


def _database_answers(system: System) -> None:
    checks.database_answers(system.new_uow())


def _account_in(body: bytes) -> str:
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not JSON, so it names no account and no city", code="CITY_NOT_NAMED") from None
    account_no = document.get("account_no") if isinstance(document, dict) else None
    if not isinstance(account_no, str):
        raise InvalidInput("account_no is needed to choose the city (its first four digits)", code="CITY_NOT_NAMED")
    return account_no


def _replay(body: bytes) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive


async def _answer(send: Send, status: int, body: bytes, media_type: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", media_type.encode()), (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def create_province_app(config: ProvinceConfig, base: Settings) -> ProvinceRouter:
    """Every city's API on its own System (engine, pool, caches), behind one router."""
    systems = {city.code: bootstrap(config.city_settings(base, city.code)) for city in config.cities}
    apps = {code: create_app(system) for code, system in systems.items()}
    return ProvinceRouter(config.province(), apps, systems, body_bytes_max=base.request_body_bytes_max, city_requests_max=base.province_city_requests_max, city_rest_s=base.province_city_rest_s)


PROVINCE_APP_FACTORY = "gasworks.entrypoints.api.province:province_app_from_environment"


def province_app_from_environment() -> ProvinceRouter:
    """For uvicorn's worker processes: the province file and settings from GASWORKS_*."""
    from gasworks.config import load_province
    from gasworks.observability import configure_logging

    settings = Settings()
    configure_logging(json=settings.log_json)
    return create_province_app(load_province(settings.province_file), settings)
