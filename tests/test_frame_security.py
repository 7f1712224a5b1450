"""Meter frames are authenticated both ways, on SQLite and PostgreSQL.

A spoofed downlink credits nothing at the meter; a forged or replayed uplink is refused, recorded
and changes nothing (also after a restart); keys rotate with a bounded overlap; a process that
cannot compute a meter model's MAC refuses to start; meter keys are sealed under the site key.
"""

import os

import pytest
from cryptography.exceptions import UnsupportedAlgorithm
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import create_engine, delete, select
from typer.testing import CliRunner

from gasworks.adapters.db import tables as t
from gasworks.adapters.meters import cjt188, frame_security
from gasworks.adapters.meters.frame_security import MacSchemeUnavailable, MeterKeyring, cmac_by_hand, compute_mac, require_schemes
from gasworks.adapters.meters.transport import LoopbackTransport
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.accounts import MeterKind
from gasworks.domain.delivery import CommandState
from gasworks.domain.errors import InvalidInput
from gasworks.domain.meter_messages import Alarm, CurrentData, PurchaseAck, WritePurchase
from gasworks.domain.meter_security import MAC_BYTES, MacScheme, MeterFrameCounters, SiteKeyMismatch
from gasworks.entrypoints.api.app import create_app
from gasworks.entrypoints.cli.main import app as cli
from gasworks.entrypoints.workers.worker import Worker
from gasworks.services import accounts, meter_keys
from gasworks.services.access import Role
from gasworks.services.checks import check_ledger
from gasworks.sim.meter import SimulatedMeter
from tests.delivery_rig import IOT_SERIAL, Rig
from tests.support import api_key, handle_frame, set_up

SITE_KEY = "11" * 32


@pytest.fixture
def rig(system) -> Rig:
    set_up(system)
    return Rig(system, LoopbackTransport())


def forged(message, *, key: bytes | None = None, key_version: int = 1, counter: int = 1_000) -> bytes:
    """A frame sealed by someone who does not hold the meter's key (a random one unless given)."""
    key = key or os.urandom(16)
    return cjt188.encode_sealed(message, key_version=key_version, counter=counter, mac=lambda signed: compute_mac(MacScheme.SM4_CMAC, key, signed))


def refusals(rig: Rig) -> list[str]:
    with rig.system.new_uow() as uow:
        return [r["code"] for r in reversed(uow.rejections.list(limit=50, channel_id="meters"))]


def security(rig: Rig):
    with rig.system.new_uow() as uow:
        return uow.meter_keys.get_security(IOT_SERIAL)


def report(meter: SimulatedMeter, rig: Rig) -> bytes:
    return meter.report(rig.system.clock.now())


# ---- the schemes -----------------------------------------------------------------------------------


def test_sm4_is_real_sm4_and_both_cmacs_match_cmac_built_from_the_bare_cipher():
    require_schemes([MacScheme.SM4_CMAC, MacScheme.AES128_CMAC])  # this machine's OpenSSL computes both
    key = bytes.fromhex("0123456789abcdeffedcba9876543210")
    assert frame_security.block_encrypt(MacScheme.SM4_CMAC, key, key).hex() == "681edf34d206965e86b3e94f536e4246"  # GB/T 32907 A.1
    rfc4493_key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert cmac_by_hand(MacScheme.AES128_CMAC, rfc4493_key, b"").hex() == "bb1d6929e95937287fa37d129b756746"  # RFC 4493 example 1


@given(st.sampled_from([MacScheme.SM4_CMAC, MacScheme.AES128_CMAC]), st.binary(min_size=16, max_size=16), st.binary(max_size=80))
def test_the_library_cmac_equals_the_hand_built_one_for_any_key_and_message(scheme, key, data):
    assert compute_mac(scheme, key, data) == cmac_by_hand(scheme, key, data)[:MAC_BYTES]


class _NoSM4:
    def __init__(self, key: bytes) -> None:
        raise UnsupportedAlgorithm("sm4 is not supported by this OpenSSL build")


def test_a_worker_that_cannot_compute_sm4_refuses_to_start_and_never_falls_back(system, monkeypatch, tmp_path):
    set_up(system)
    monkeypatch.setitem(frame_security._CIPHERS, MacScheme.SM4_CMAC, _NoSM4)
    with pytest.raises(MacSchemeUnavailable, match="sm4-cmac"):
        Worker(system, LoopbackTransport())
    require_schemes([MacScheme.AES128_CMAC])  # a site whose models all use AES would still start
    url = f"sqlite:///{tmp_path / 'g.db'}"
    assert CliRunner().invoke(cli, ["db", "upgrade", "--database-url", url]).exit_code == 0
    refused = CliRunner().invoke(cli, ["worker", "--database-url", url, "--mqtt-url", "mqtt://127.0.0.1:1"])
    assert refused.exit_code == 2 and "MAC_SCHEME_UNAVAILABLE" in refused.output and "Traceback" not in refused.output


# ---- downlinks: the meter takes only what gasworks sealed ------------------------------------------


def test_a_spoofed_write_purchase_credits_nothing_at_the_meter_and_a_real_one_still_does(rig):
    rig.wake()
    rig.settle()
    credit_before = rig.meter.credit_litres
    spoofs = [
        forged(WritePurchase(IOT_SERIAL, 9, 1, 1_000_000)),  # a MAC under a key the attacker made up
        forged(WritePurchase(IOT_SERIAL, 9, 1, 1_000_000), key_version=2),  # a key version the meter does not hold
        cjt188.encode(WritePurchase(IOT_SERIAL, 9, 1, 1_000_000)),  # no seal at all, as frames were before
    ]
    for spoof in spoofs:
        rig.transport.publish(IOT_SERIAL, spoof)
    assert rig.meter.refused == ["FRAME_MAC_INVALID", "FRAME_KEY_VERSION_UNKNOWN", "MALFORMED_FRAME"]
    assert rig.meter.applied == [] and rig.meter.credit_litres == credit_before
    paid = rig.pay(10_000)
    rig.settle()
    assert rig.orders(paid.payment_id)[0].state == CommandState.APPLIED  # the spoofs' high counter moved nothing
    assert rig.meter.applied == [(1, 33_444)]
    genuine = rig.meter.frames_seen[-1]
    rig.transport.publish(IOT_SERIAL, genuine)  # a captured genuine frame, played again
    assert rig.meter.refused[-1] == "FRAME_REPLAYED" and rig.meter.applied == [(1, 33_444)]
    assert security(rig).downlink_counter_sent == rig.meter.keyring.counters.downlink_counter_seen == 1


# ---- uplinks: the worker takes only what the meter sealed ------------------------------------------


def test_a_forged_acknowledgement_is_refused_recorded_and_applies_nothing(rig):
    rig.wake()
    rig.settle()
    paid = rig.pay(10_000)  # sent at once: the meter listens
    rig.meter.acks_to_lose = 0
    rig.meter.sleep()  # ... but this time it never answers
    rig.settle()
    ack = PurchaseAck(IOT_SERIAL, rig.orders(paid.payment_id)[0].frame_seq, applied_seq=1, credit_litres=50_000)
    outcomes = [
        handle_frame(IOT_SERIAL, forged(ack), rig.system.new_uow()),
        handle_frame(IOT_SERIAL, forged(ack, key_version=9), rig.system.new_uow()),
        handle_frame(IOT_SERIAL, cjt188.encode(ack), rig.system.new_uow()),
    ]
    assert [o.accepted for o in outcomes] == [False, False, False]
    assert refusals(rig) == ["FRAME_MAC_INVALID", "FRAME_KEY_VERSION_UNKNOWN", "MALFORMED_FRAME"]
    assert rig.orders(paid.payment_id)[0].state != CommandState.APPLIED
    with rig.system.new_uow() as uow:
        assert uow.ledger.entries_sum_fen("revenue") == 0
        assert uow.meters.get(IOT_SERIAL).applied_seq == 0
    operator = {"Authorization": f"Bearer {api_key(rig.system, Role.OPERATOR)}"}
    listed = TestClient(create_app(rig.system)).get("/v1/rejections", params={"channel_id": "meters"}, headers=operator)
    assert listed.status_code == 200
    assert {r["code"] for r in listed.json()} == {"FRAME_MAC_INVALID", "FRAME_KEY_VERSION_UNKNOWN", "MALFORMED_FRAME"}
    assert check_ledger(rig.system.new_uow()).ok


def test_a_replayed_report_is_refused_and_never_overwrites_newer_state_even_after_a_restart(rig, database_url, clock):
    first = report(rig.meter, rig)
    assert handle_frame(IOT_SERIAL, first, rig.system.new_uow()).accepted
    rig.meter.use(5_000)
    rig.meter.alarms = Alarm.LEAK
    second = report(rig.meter, rig)
    assert handle_frame(IOT_SERIAL, second, rig.system.new_uow()).accepted
    replay = handle_frame(IOT_SERIAL, first, rig.system.new_uow())
    assert not replay.accepted and replay.what.startswith("FRAME_REPLAYED")
    restarted = bootstrap(Settings(database_url=database_url), clock=clock)  # a new process on the same database
    try:
        Worker(restarted, LoopbackTransport())
        again = handle_frame(IOT_SERIAL, second, restarted.new_uow())
        assert not again.accepted and again.what.startswith("FRAME_REPLAYED")
        with restarted.new_uow() as uow:
            link = uow.meters.get(IOT_SERIAL)
        assert link.credit_litres == rig.meter.credit_litres and Alarm(link.alarms) == Alarm.LEAK
    finally:
        restarted.engine.dispose()
    assert refusals(rig) == ["FRAME_REPLAYED", "FRAME_REPLAYED"]
    assert security(rig).uplink_counter_seen == 2


def test_a_frame_for_a_meter_without_mac_is_taken_only_through_an_authenticated_carrier(system):
    set_up(system)
    accounts.open_account(
        accounts.OpenAccount("4301000009", "李四", "", "华新苑", "G-01", "13900000000", "00000000000009", MeterKind.IOT, meter_model="carrier-plain"),
        system.new_uow(), actor="test",
    )  # fmt: skip
    plain = SimulatedMeter("00000000000009")  # no key: a model without MAC
    over_mqtt = handle_frame("00000000000009", plain.report(system.clock.now()), system.new_uow())
    assert not over_mqtt.accepted and over_mqtt.what.startswith("FRAME_MAC_REQUIRED")
    via_carrier = handle_frame("00000000000009", plain.report(system.clock.now()), system.new_uow(), carrier_authenticated=True)
    assert via_carrier.accepted


# ---- key rotation -----------------------------------------------------------------------------------


def test_a_rotated_key_overlaps_until_the_meter_uses_it_then_the_old_one_is_refused(rig):
    old = meter_keys.export_key(IOT_SERIAL, rig.system.new_uow(), actor="test")
    new = meter_keys.rotate_key(IOT_SERIAL, rig.system.new_uow(), actor="test")
    assert (old.key_version, new.key_version) == (1, 2) and old.key != new.key
    # Overlap: the meter still holds version 1; its frames are taken and it is sent frames it can open.
    rig.wake()
    rig.settle()
    first = rig.pay(5_000)
    rig.settle()
    assert rig.orders(first.payment_id)[0].state == CommandState.APPLIED
    assert (security(rig).active_key_version, security(rig).pending_key_version) == (1, 2)
    # The installer writes version 2 into the meter; its first frame under it completes the rotation.
    rig.meter.install_key(new)
    rig.wake()
    rig.settle()
    assert (security(rig).active_key_version, security(rig).pending_key_version) == (2, None)
    second = rig.pay(5_000)
    rig.settle()
    assert rig.orders(second.payment_id)[0].state == CommandState.APPLIED  # downlinks now sealed under version 2
    # Version 1 is refused from now on, whoever holds it.
    stale = MeterKeyring(old.scheme, old.key, MeterFrameCounters(key_version=1, uplink_counter_sent=10_000))
    refused = handle_frame(IOT_SERIAL, stale.seal(CurrentData(IOT_SERIAL, 1, 0, 99_999, 0, True, 3_600, Alarm(0), rig.system.clock.now().replace(tzinfo=None, microsecond=0))), rig.system.new_uow())
    assert not refused.accepted and refused.what.startswith("FRAME_KEY_VERSION_UNKNOWN")
    with rig.system.new_uow() as uow:
        assert uow.audit.count_actions("meter.key.rotated") == 1


def test_an_operator_finishes_a_rotation_and_the_old_version_is_refused_at_once(rig):
    rig.wake()
    rig.settle()
    new = meter_keys.rotate_key(IOT_SERIAL, rig.system.new_uow(), actor="test")
    with pytest.raises(Exception, match="already rotating"):
        meter_keys.rotate_key(IOT_SERIAL, rig.system.new_uow(), actor="test")
    assert meter_keys.finish_rotation(IOT_SERIAL, rig.system.new_uow(), actor="test") == 2
    refused = handle_frame(IOT_SERIAL, report(rig.meter, rig), rig.system.new_uow())  # the meter still holds version 1
    assert not refused.accepted and refused.what.startswith("FRAME_KEY_VERSION_UNKNOWN")
    rig.meter.install_key(new)
    assert handle_frame(IOT_SERIAL, report(rig.meter, rig), rig.system.new_uow()).accepted


# ---- keys at rest -------------------------------------------------------------------------------------


def test_meter_keys_are_sealed_under_the_configured_site_key_and_do_not_open_under_another(database_url, clock):
    system = bootstrap(Settings(database_url=database_url, site_key=SITE_KEY), clock=clock)
    other = bootstrap(Settings(database_url=database_url, site_key="22" * 32), clock=clock)
    try:
        set_up(system)
        key = meter_keys.export_key(IOT_SERIAL, system.new_uow(), actor="test")
        with system.engine.connect() as c:
            stored = c.execute(select(t.meter_keys.c.key_sealed)).scalar_one()
            dev_secret = c.execute(select(t.site_secrets).where(t.site_secrets.c.name == "meter_key_kek")).first()
        assert key.key not in bytes(stored) and len(key.key) == 16
        assert dev_secret is None  # a configured site key generates nothing into the database
        with pytest.raises(SiteKeyMismatch) as mismatch:
            meter_keys.export_key(IOT_SERIAL, other.new_uow(), actor="test")
        assert mismatch.value.code == "SITE_KEY_MISMATCH"
    finally:
        system.engine.dispose()
        other.engine.dispose()
    with pytest.raises(InvalidInput, match="GASWORKS_SITE_KEY"):
        bootstrap(Settings(database_url=database_url, site_key="not a key"), clock=clock).new_uow()


def test_an_account_with_an_unknown_meter_model_is_refused_with_a_code_and_an_aes_model_gets_an_aes_key(system):
    set_up(system)
    client = TestClient(create_app(system))
    operator = {"Authorization": f"Bearer {api_key(system, Role.OPERATOR)}"}
    body = {"account_no": "4301000007", "name": "王五", "address": "", "community": "", "grid": "", "phone": "13700000000", "meter_serial": "00000000000007", "meter_kind": "iot"}
    unknown = client.post("/v1/accounts", json={**body, "meter_model": "no-such-model"}, headers=operator)
    assert unknown.status_code == 422 and unknown.json()["error"]["code"] == "UNKNOWN_METER_MODEL"
    opened = client.post("/v1/accounts", json={**body, "meter_model": "cjt188-aes"}, headers=operator)
    assert opened.status_code == 201
    assert meter_keys.export_key("00000000000007", system.new_uow(), actor="test").scheme == MacScheme.AES128_CMAC


def test_an_operator_rotates_a_meter_key_from_the_command_line(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    runner = CliRunner()

    def run(*args):
        return runner.invoke(cli, [*args, "--database-url", url])

    assert run("db", "upgrade").exit_code == 0
    assert run("accounts", "add", "4301000001", "--name", "张三", "--phone", "13812345678", "--meter-serial", "00000000000001", "--meter-kind", "iot").exit_code == 0
    assert "key v1" in run("meters", "keys", "00000000000001").output
    key_file = tmp_path / "meter.key"
    rotated = run("meters", "rotate-key", "00000000000001", "--out", str(key_file))
    assert rotated.exit_code == 0 and oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert key_file.read_text().split()[:4] == ["00000000000001", "cjt188-sm4", "sm4-cmac", "v2"]
    assert "rotating to v2" in run("meters", "keys", "00000000000001").output
    assert run("meters", "finish-rotation", "00000000000001").exit_code == 0
    assert "key v2" in run("meters", "keys", "00000000000001").output
    unknown = run("meters", "rotate-key", "00000000000099")
    assert unknown.exit_code == 2 and "METER_NOT_KEYED" in unknown.output
    engine = create_engine(url)
    with engine.begin() as c:  # a meter registered before meter keys existed
        c.execute(delete(t.meter_keys))
        c.execute(delete(t.meter_frame_security))
    engine.dispose()
    assert "METER_NOT_KEYED" in run("meters", "keys", "00000000000001").output
    first = run("meters", "rotate-key", "00000000000001", "--model", "cjt188-aes")
    assert first.exit_code == 0 and "key version 1" in first.output and "aes128-cmac" in first.output
    bad_site_key = runner.invoke(cli, ["meters", "export-key", "00000000000001", "--database-url", url], env={"GASWORKS_SITE_KEY": "short"})
    assert bad_site_key.exit_code == 2 and "INVALID_SITE_KEY" in bad_site_key.output


def test_a_frame_reflected_back_to_its_sender_is_refused_and_blocks_nothing(rig):
    """Each side's frames carry a valid MAC under the shared key: direction, not the MAC, refuses a reflection."""
    rig.wake()
    rig.settle()
    first = rig.pay(5_000)
    rig.settle()
    downlink = rig.meter.frames_seen[-1]  # gasworks' sealed write purchase, replayed on the meter's up topic
    reflected_up = handle_frame(IOT_SERIAL, downlink, rig.system.new_uow())
    assert not reflected_up.accepted and reflected_up.what.startswith("NOT_AN_UPLINK")
    rig.meter.keyring.counters.uplink_counter_sent += 100  # a meter report with a counter above every downlink's
    report_frame = report(rig.meter, rig)
    rig.meter.keyring.counters.uplink_counter_sent -= 100
    rig.transport.publish(IOT_SERIAL, report_frame)  # ... reflected to the meter's down topic
    assert rig.meter.refused[-1] == "NOT_A_DOWNLINK"
    assert security(rig).uplink_counter_seen < 100 and rig.meter.keyring.counters.downlink_counter_seen < 100  # no counter was taken
    second = rig.pay(5_000)
    rig.wake()
    rig.settle()
    assert [rig.orders(p.payment_id)[0].state for p in (first, second)] == [CommandState.APPLIED, CommandState.APPLIED]
