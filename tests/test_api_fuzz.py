"""Schemathesis throws schema-shaped and malformed requests at every operation: never a 500.

Operators' endpoints are called with an operator key, kiosks' and card desks' with a device key,
and the wallet's bill-payment endpoints with bodies HMAC-signed as a real wallet would sign them,
so the fuzzing reaches past authentication into the payment path itself."""

import json

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.core import NotSet

from gasworks.adapters.db.migrate import upgrade
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from tests.conftest import make_system
from tests.support import api_key, set_up


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from datetime import UTC, datetime

    from gasworks.domain.clock import FixedClock

    system = make_system(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'g.db'}", FixedClock(datetime(2026, 11, 23, 9, tzinfo=UTC)))
    upgrade(system.engine)
    app = create_app(system)
    app.state.notifiers = set_up(system)
    app.state.system = system
    app.state.operator_key = api_key(system, Role.OPERATOR)
    app.state.device_key = api_key(system, Role.DEVICE, channel_id="kiosk")
    return app


def is_wallet(path: str) -> bool:
    return path.startswith("/v1/channels/{channel_id}/") and not path.endswith("/notify")


def test_no_request_makes_a_server_error(api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    operator = {"Authorization": f"Bearer {api.state.operator_key}"}
    device = {"Authorization": f"Bearer {api.state.device_key}"}
    system, wallet, client = api.state.system, api.state.notifiers.wallet, TestClient(api)
    failures, calls, reached = [], [], []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    assert {"/v1/devices/payments", "/v1/devices/accounts/{account_no}", "/v1/channels/{channel_id}/payments"} <= {o.path for o in operations}

    def signed_wallet_call(case):  # noqa: ANN202 - the wallet's own signature over the exact bytes sent
        case.path_parameters["channel_id"] = "wo-wallet"
        path = case.formatted_path
        body = b"" if isinstance(case.body, NotSet) else json.dumps(case.body).encode()
        headers = wallet.signed_headers(case.method, path, body, system.clock.now())
        return client.request(case.method, path, content=body or None, headers=headers)

    for operation in operations:
        headers = device if operation.path.startswith(("/v1/devices/", "/v1/cards/")) else operator

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = signed_wallet_call(case) if is_wallet(operation.path) else case.call(headers=headers)
            calls.append(response.status_code)
            if response.status_code < 400 and operation.path.startswith(("/v1/devices/", "/v1/channels/")):
                reached.append(operation.path)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:200]}: {response.status_code} {response.text[:200]}")

        check()
    assert failures == []
    assert len(calls) > 10 * len(operations)  # the fuzzing really ran
    assert "/v1/channels/{channel_id}/payments" in reached  # signed payments got past authentication and were taken
    report = check_ledger(system.new_uow())
    assert report.ok, report.findings
