"""The chaos soak: its plan comes from the seed, its judge catches each broken invariant, and a
one-minute soak of the real processes (private PostgreSQL, authenticated Mosquitto, `gasworks
serve`, two workers) under SIGKILLs, restarts, message faults and forgeries keeps every invariant.

The soak asserts counts, never times."""

import shutil
from collections import Counter
from dataclasses import replace

import pytest
from typer.testing import CliRunner

from gasworks.entrypoints.cli.main import app
from gasworks.sim.chaos import FORGERIES, PROCESS_FAULTS, Forged
from gasworks.sim.soak import (
    INVARIANTS,
    BookedPayment,
    IssuedPurchase,
    Snapshot,
    Soak,
    SoakOptions,
    judge,
    make_plan,
)
from gasworks.sim.soak_rig import SoakSetupFailed, postgres_bin_dir
from tests.conftest import service_missing

AVAILABLE_FORGERIES = [k.name for k in FORGERIES.values() if k.available]
FRAME_FAULTS = [f"{d} frame {fate}" for d in ("downlink", "uplink") for fate in ("dropped", "duplicated", "delayed (reordered)")]


def test_the_same_seed_plans_the_same_soak_and_a_minute_covers_every_fault_and_forgery():
    options = SoakOptions(minutes=1, seed=7)
    plan = make_plan(options)
    assert plan == make_plan(options)
    assert plan != make_plan(replace(options, seed=8))
    assert {r.fault for r in plan} == set(PROCESS_FAULTS)
    assert {k for r in plan for k in r.forgeries} == set(AVAILABLE_FORGERIES)
    assert sum(len(r.payments) for r in plan) == options.payments_per_minute
    assert sum(len(r.forgeries) for r in plan) == options.forgeries_per_minute
    assert all(p.amount_fen > 0 and isinstance(p.amount_fen, int) for r in plan for p in r.payments)


def _clean() -> Snapshot:
    key = ("wo-wallet", "SK1")
    return Snapshot(
        sent={key: 10_000},
        answered={key: "pay_1"},
        honest_refused=[],
        forged=[Forged("wallet_bad_signature", True, lambda row: row.get("code") == "SIGNATURE_INVALID")],
        ledger_findings=[],
        payments={key: BookedPayment("pay_1", 10_000, "booked")},
        orders={("31000000000000", 1): IssuedPurchase(3_531, "applied")},
        rejections=[{"channel_id": "wo-wallet", "code": "SIGNATURE_INVALID", "request_summary": {}}],
        applied_before={"31000000000000": [(1, 3_531)]},
        applied_after={"31000000000000": [(1, 3_531)]},
        final=True,
    )


def _broken(snapshot: Snapshot) -> set[str]:
    return {name for name, found in judge(snapshot).items() if found}


def test_the_judge_passes_a_clean_snapshot():
    assert _broken(_clean()) == set()
    assert set(judge(_clean())) == set(INVARIANTS)


@pytest.mark.parametrize(
    ("harm", "invariant"),
    [
        (lambda s: replace(s, ledger_findings=["UNBALANCED tx 9"]), "gasworks check passes"),
        (lambda s: replace(s, payments={}), "0 fen lost"),
        (lambda s: replace(s, payments={**s.payments, ("wo-wallet", "SK1"): BookedPayment("pay_1", 9_999, "booked")}), "0 fen lost"),
        (lambda s: replace(s, payments={**s.payments, ("kiosk", "NOBODY"): BookedPayment("pay_2", 500, "booked")}), "0 fen doubled"),
        (lambda s: replace(s, answered={("wo-wallet", "SK1"): "pay_other"}), "0 fen doubled"),
        (lambda s: replace(s, applied_before={"31000000000000": [(1, 3_531), (2, 100)]}), "0 purchases applied without an issued serial"),
        (lambda s: replace(s, applied_before={"31000000000000": [(1, 9_999)]}), "0 purchases applied without an issued serial"),
        (lambda s: replace(s, applied_after={"31000000000000": []}), "nothing shown applied that the meter has not applied"),
        (lambda s: replace(s, forged=[Forged("wallet_bad_signature", False, s.forged[0].matches)]), "every forgery refused"),
        (lambda s: replace(s, rejections=[]), "every forgery recorded (injected = rejections)"),
        (lambda s: replace(s, forged=[Forged("malformed_frame", None, lambda row: False)]), "every forgery refused"),
        (lambda s: replace(s, answered={}, payments={}), "every honest payment booked once"),
        (lambda s: replace(s, honest_refused=["wo-wallet SK1: HTTP 400"]), "every honest payment booked once"),
    ],
)
def test_the_judge_catches_each_broken_invariant(harm, invariant):
    assert invariant in _broken(harm(_clean()))


def test_an_unanswered_payment_is_only_a_finding_at_the_end():
    in_flight = replace(_clean(), sent={**_clean().sent, ("wechat", "SK2"): 3_000})
    assert _broken(replace(in_flight, final=False)) == set()
    assert _broken(in_flight) == {"every honest payment booked once"}


def test_soak_refuses_bad_options_with_a_clear_message():
    result = CliRunner().invoke(app, ["soak", "--minutes", "0"])
    assert result.exit_code == 2
    assert "minutes" in result.output


@pytest.fixture
def soak_services() -> None:
    try:
        postgres_bin_dir()
    except SoakSetupFailed as error:
        service_missing(error.message)
    if shutil.which("mosquitto") is None:
        service_missing("mosquitto not found (apt-get install mosquitto)")


def test_a_one_minute_soak_with_a_fixed_seed_keeps_every_invariant(soak_services):
    options = SoakOptions(minutes=1, seed=1)
    plan = make_plan(options)
    report = Soak(options).run()

    assert report.findings == []
    assert report.gasworks_check_exit == 0
    assert report.checks_run == len(plan) + 1  # after every fault, and at the end
    assert set(INVARIANTS) | {"every gasworks process running"} == set(report.invariants)
    assert {name: held for name, (held, _) in report.invariants.items()} == {name: report.checks_run for name in report.invariants}
    assert report.ok

    planned_faults = Counter(r.fault for r in plan)
    planned_fates = Counter(f"notification {p.fate}" for r in plan for p in r.payments if p.fate != "on time")
    assert {k: report.faults[k] for k in PROCESS_FAULTS} == {k: planned_faults[k] for k in PROCESS_FAULTS}
    assert {k: report.faults[k] for k in planned_fates} == dict(planned_fates)
    assert all(report.faults[k] > 0 for k in FRAME_FAULTS), report.faults

    planned_forgeries = Counter(k for r in plan for k in r.forgeries)
    for name in AVAILABLE_FORGERIES:
        count = report.forgeries[name]
        assert count.injected == count.refused == planned_forgeries[name], name
        if FORGERIES[name].recorded_today:
            assert count.recorded == count.injected, name

    # Forgeries that replay or contradict a payment first make an honest one of their own.
    honest = options.payments_per_minute + planned_forgeries["wallet_replayed_nonce"] + planned_forgeries["wallet_conflicting_txn_id"]
    assert report.honest_sent == report.honest_booked == honest
    assert report.booked_fen == report.honest_fen
    assert report.purchases_issued == report.purchases_applied == honest
