"""Schemathesis throws schema-shaped and malformed requests at every operation: never a 500."""

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from gasworks.adapters.db.migrate import upgrade
from gasworks.entrypoints.api.app import create_app
from gasworks.services.access import Role
from tests.conftest import make_system
from tests.support import api_key, set_up


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    from datetime import UTC, datetime

    from gasworks.domain.clock import FixedClock

    system = make_system(f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'g.db'}", FixedClock(datetime(2026, 11, 23, 9, tzinfo=UTC)))
    upgrade(system.engine)
    set_up(system)
    app = create_app(system)
    app.state.operator_key = api_key(system, Role.OPERATOR)
    return app


def test_no_request_makes_a_server_error(api):
    schema = schemathesis.openapi.from_asgi("/openapi.json", api)
    headers = {"Authorization": f"Bearer {api.state.operator_key}"}
    failures, calls = [], []
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            response = case.call(headers=headers)
            calls.append(response.status_code)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} {case.query} {str(case.body)[:200]}: {response.status_code} {response.text[:200]}")

        check()
    assert failures == []
    assert len(calls) > 10 * len(operations)  # the fuzzing really ran
