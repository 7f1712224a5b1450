"""Meter model profiles: each model's frames, real vendors' layouts, one-byte serials that wrap, one
model notion from the command line, and the migration that unified the two old ones."""

import random
from dataclasses import replace
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from gasworks.adapters.db.migrate import upgrade
from gasworks.adapters.meters import cjt188
from gasworks.domain.delivery import ClaimVerdict, judge_claim, seq_on_wire, unwrap_seq
from gasworks.domain.errors import InvalidInput, MalformedFrame
from gasworks.domain.meter_messages import (
    Alarm,
    CommandRefused,
    CurrentData,
    MeterErrorCode,
    PurchaseAck,
    ReadCurrentData,
    SetValve,
    ValveAck,
    WritePurchase,
)
from gasworks.domain.meter_models import BUILT_IN_MODELS, CreditUnit, DiByteOrder, MacScheme, MeterModel
from gasworks.entrypoints.cli.main import app
from gasworks.sim.meter import SimulatedMeter

SERIAL = "00000000000012"
VOLUME = BUILT_IN_MODELS["cjt188-sm4"]
MONEY = BUILT_IN_MODELS["cjt188-money"]
VOLUME_HIGH_FIRST = replace(VOLUME, name="vendor-90-1f", di_byte_order=DiByteOrder.HIGH_FIRST)
ONE_BYTE_VOLUME = replace(VOLUME, name="volume-1b", purchase_seq_bytes=1)
PROFILES = [VOLUME, MONEY, VOLUME_HIGH_FIRST, ONE_BYTE_VOLUME]


def _checksummed(hex_frame: str) -> bytes:
    """Bytes from 68 up to CS (exclusive), with the right checksum and 16 appended."""
    body = bytes.fromhex(hex_frame.replace(" ", ""))
    return body + bytes([sum(body) % 256, 0x16])


# ---- each profile's frames ---------------------------------------------------------------------


def _messages(model: MeterModel, *, seq: int, litres: int, fen: int, credit: int, clock: datetime) -> list:
    money = model.is_money_meter
    return [
        ReadCurrentData(SERIAL, 7),
        CurrentData(SERIAL, 8, litres, None if money else credit, seq, True, 3_600, Alarm.LOW_BATTERY, clock, credit if money else None),
        WritePurchase(SERIAL, 9, seq, 0 if money else litres, fen if money else None),
        PurchaseAck(SERIAL, 9, seq, None if money else credit, credit if money else None),
        SetValve(SERIAL, 10, False),
        ValveAck(SERIAL, 10, True),
        CommandRefused(SERIAL, 9, cjt188.DI_WRITE_PURCHASE, MeterErrorCode.SEQUENCE_GAP),
    ]


@pytest.mark.parametrize("model", PROFILES, ids=lambda m: m.name)
@given(
    seq=st.integers(0, 255),
    litres=st.integers(0, 99_999_999),
    fen=st.integers(0, 99_999_999),
    credit=st.integers(-99_999_999, 99_999_999),
    clock=st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(lambda d: d.replace(microsecond=0)),
)
@settings(max_examples=40, deadline=None)
def test_every_message_of_every_profile_goes_through_its_frame_and_back(model, seq, litres, fen, credit, clock):
    for message in _messages(model, seq=seq, litres=litres, fen=fen, credit=credit, clock=clock):
        assert cjt188.decode(cjt188.encode(message, model), model) == message


def test_the_data_identifier_is_written_in_the_models_byte_order():
    low = cjt188.encode(ReadCurrentData(SERIAL, 0), VOLUME)
    high = cjt188.encode(ReadCurrentData(SERIAL, 0), VOLUME_HIGH_FIRST)
    assert low[2 + 11 : 2 + 13] == bytes([0x1F, 0x90])
    assert high[2 + 11 : 2 + 13] == bytes([0x90, 0x1F])
    with pytest.raises(MalformedFrame, match="DI 0x1f90"):  # the other order is refused, never guessed
        cjt188.decode(high, VOLUME)
    with pytest.raises(MalformedFrame, match="DI 0x1f90"):
        cjt188.decode(low, VOLUME_HIGH_FIRST)


def test_a_money_meter_is_written_the_purchase_in_bcd_yuan_with_a_one_byte_serial():
    """¥123.45 as purchase 255: SER 0xFF (one binary byte), amount 45 23 01 00 (BCD yuan, 2 decimals, low byte first)."""
    frame = cjt188.encode(WritePurchase(SERIAL, 3, 255, 0, amount_fen=12_345), MONEY)
    assert frame == bytes([0xFE, 0xFE]) + _checksummed("68 30 12 00 00 00 00 00 00 04 08 A0 13 03 FF 45 23 01 00")
    assert cjt188.decode(frame, MONEY) == WritePurchase(SERIAL, 3, 255, 0, 12_345)
    ack = cjt188.encode(PurchaseAck(SERIAL, 3, 255, None, credit_fen=-150), MONEY)  # owes ¥1.50
    assert ack[2 + 13 :][:7] == bytes([0x03, 0xFF, 0x80, 0x50, 0x01, 0x00, 0x00])
    with pytest.raises(MalformedFrame, match="one byte"):
        cjt188.encode(WritePurchase(SERIAL, 3, 256, 0, amount_fen=1), MONEY)  # the caller sends it modulo 256
    with pytest.raises(MalformedFrame, match="amount in fen"):
        cjt188.encode(WritePurchase(SERIAL, 3, 1, 500), MONEY)  # litres mean nothing to a money meter
    with pytest.raises(MalformedFrame, match="litres"):
        cjt188.encode(PurchaseAck(SERIAL, 3, 1, None, credit_fen=5), VOLUME)


def test_a_volume_meters_purchase_is_litres_with_a_four_byte_bcd_serial():
    frame = cjt188.encode(WritePurchase(SERIAL, 3, 1_234, 50_000), VOLUME)
    assert frame == bytes([0xFE, 0xFE]) + _checksummed("68 30 12 00 00 00 00 00 00 04 0B 13 A0 03 34 12 00 00 00 00 05 00")


# ---- real vendors' layouts (public CJ/T 188 implementations) -------------------------------------

# aixiwang/python_cjt188 (BSD licence), python_cjt188.py: its encoder self-test expects this read
# request, DI written 90 1F, to a water meter (T = 0x10) at address 12 00 00 00 00 00 00. Its final
# code sends the same request with 1F 90, the order of CJ/T 188 as written (and of
# xijunzhou/sdqr_energy_node_class, Src/meter/cj188.h: CJ188_DI0_READ_DATA 0x1f, CJ188_DI1 0x90).
PYTHON_CJT188_READ_90_1F = bytes.fromhex("68 10 12 00 00 00 00 00 00 01 03 90 1F 00 3D 16".replace(" ", ""))
# The same tool's decoder self-test: a water meter's 0x901F reply in the standard layout (unit byte
# 0x2C after each 4-byte BCD value, 7-byte clock, 2-byte ST), after three FE.
PYTHON_CJT188_REPLY = bytes.fromhex("FE FE FE 68 10 12 00 00 00 00 00 00 81 16 90 1F 00 10 00 10 00 2C 10 00 10 00 2C 00 00 00 00 00 00 00 00 FF 67 16".replace(" ", ""))


def test_a_published_read_request_is_refused_as_a_water_meter_and_read_in_its_dialect_as_a_gas_meter():
    with pytest.raises(MalformedFrame, match="not a gas meter"):
        cjt188.decode(PYTHON_CJT188_READ_90_1F, VOLUME_HIGH_FIRST)
    as_gas_meter = _checksummed(PYTHON_CJT188_READ_90_1F[:-2].hex().replace("6810", "6830", 1))  # T = 0x30, checksum again
    assert cjt188.decode(as_gas_meter, VOLUME_HIGH_FIRST) == ReadCurrentData("00000000000012", 0)
    assert cjt188.encode(ReadCurrentData("00000000000012", 0), VOLUME_HIGH_FIRST)[2:] == as_gas_meter
    with pytest.raises(MalformedFrame, match="DI 0x1f90"):
        cjt188.decode(as_gas_meter, VOLUME)
    low_first = _checksummed("68 30 12 00 00 00 00 00 00 01 03 1F 90 00")  # the tool's final byte order
    assert cjt188.decode(low_first, VOLUME) == ReadCurrentData("00000000000012", 0)


def test_a_published_current_data_reply_in_another_layout_is_refused_saying_why():
    assert sum(PYTHON_CJT188_REPLY[3:-2]) % 256 == PYTHON_CJT188_REPLY[-2]  # its checksum is right: the layout differs
    with pytest.raises(MalformedFrame, match="not a gas meter"):
        cjt188.decode(PYTHON_CJT188_REPLY, VOLUME_HIGH_FIRST)
    as_gas_meter = _checksummed(PYTHON_CJT188_REPLY[3:-2].hex().replace("6810", "6830", 1))
    with pytest.raises(MalformedFrame, match="carries 26 payload bytes for model vendor-90-1f, got 19"):
        cjt188.decode(as_gas_meter, VOLUME_HIGH_FIRST)


# ---- one-byte serials over hundreds of purchases ---------------------------------------------------


@given(purchases=st.integers(600, 700), start=st.integers(0, 10_000), chaos=st.integers(0, 2**32))
@settings(max_examples=15, deadline=None)
def test_over_600_purchases_a_one_byte_serial_wraps_and_no_purchase_is_applied_twice(purchases, start, chaos):
    """gasworks' side of delivery (services/delivery.py: one purchase on the wire at a time, claims
    unwrapped within [applied, highest sent]) against a money meter's firmware, through the real
    codec: acknowledgements lost, purchases resent, recent acknowledgements heard again (a carrier
    platform's duplicates). Each purchase is applied once, in order, and gasworks never believes the
    meter further along than it is. (An acknowledgement replayed 256 purchases later is the same
    bytes: only a sealed frame's counter tells it apart, and FRAME_REPLAYED refuses it.)"""
    rng = random.Random(chaos)
    meter = SimulatedMeter(SERIAL, model=MONEY, awake=True, applied_seq=start % 256)
    applied = issued = start
    amounts = {}
    recent_acks: list[bytes] = []
    while applied < start + purchases:
        if issued < start + purchases and issued - applied < rng.choice((1, 3, 40)):
            issued += 1
            amounts[issued] = rng.randrange(100, 50_000)
        n = applied + 1  # the dispatcher sends the lowest purchase not yet applied
        frame = cjt188.encode(WritePurchase(SERIAL, n % 256, seq_on_wire(n, 256), 0, amounts[n]), MONEY)
        for reply in meter.on_downlink(frame) + meter.on_downlink(frame) * (rng.random() < 0.1):  # sometimes sent twice
            recent_acks = [*recent_acks[-100:], reply]
            if rng.random() < 0.2:
                continue  # the acknowledgement is lost: the purchase is sent again
            heard = [reply] + ([rng.choice(recent_acks)] if rng.random() < 0.3 else [])  # an earlier acknowledgement heard again
            for raw in heard:
                ack = cjt188.decode(raw, MONEY)
                assert isinstance(ack, PurchaseAck)
                claimed = unwrap_seq(ack.applied_seq, applied_seq=applied, highest_issued=n, modulus=256)
                if judge_claim(claimed, applied_seq=applied, highest_issued=issued) == ClaimVerdict.IN_RANGE:
                    applied = claimed
                assert applied <= start + len(meter.applied_fen)  # never further along than the meter really is
    assert applied == start + purchases
    assert [fen for _, fen in meter.applied_fen] == [amounts[n] for n in range(start + 1, start + purchases + 1)]
    assert [seq for seq, _ in meter.applied_fen] == [n % 256 for n in range(start + 1, start + purchases + 1)]
    assert meter.credit_fen == sum(amounts.values())


# ---- profiles are checked -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"purchase_seq_bytes": 2}, "INVALID_SERIAL_WIDTH"),
        ({"report_interval_s": 10}, "INVALID_REPORT_INTERVAL"),
        ({"name": "no spaces"}, "INVALID_METER_MODEL_NAME"),
        ({"name": "x" * 41}, "INVALID_METER_MODEL_NAME"),
        ({"description": "d" * 201}, "DESCRIPTION_TOO_LONG"),
    ],
)
def test_a_profile_no_firmware_could_have_is_refused(change, code):
    with pytest.raises(InvalidInput) as refused:
        replace(VOLUME, **change).check()
    assert refused.value.code == code


# ---- one model notion, from the command line ----------------------------------------------------

runner = CliRunner()


def _run(url, *args):
    return runner.invoke(app, [*args, "--database-url", url], env={"COLUMNS": "250"})


def test_an_operator_adds_a_vendors_model_and_opens_an_account_on_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'g.db'}"
    assert _run(url, "db", "upgrade").exit_code == 0
    listed = _run(url, "meters", "models", "list")
    for name in ("cjt188-sm4", "cjt188-aes", "carrier-plain", "cjt188-money"):
        assert name in listed.output
    added = _run(
        url, "meters", "models", "add", "xq-money", "--serial-bytes", "1", "--credit-unit", "fen", "--di-byte-order", "high-first",
        "--mac-scheme", "aes128-cmac", "--report-interval-s", "43200", "--reopen-needs-button", "--description", "a vendor's money meter",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    opened = _run(url, "accounts", "add", "4301000001", "--name", "张三", "--phone", "13812345678", "--meter-serial", "00000000000001", "--meter-kind", "iot", "--meter-model", "xq-money")
    assert opened.exit_code == 0, opened.output
    shown = _run(url, "meters", "show", "00000000000001")
    assert "model xq-money" in shown.output and "reopening needs the resident's button: yes" in shown.output
    keys = _run(url, "meters", "keys", "00000000000001")
    assert "aes128-cmac" in keys.output  # the frame security follows the one model
    row = [line for line in _run(url, "meters", "models", "list").output.splitlines() if "xq-money" in line][0]
    for value in ("aes128-cmac", "high-first", "fen", "43200 s", "yes", " 1 "):
        assert value in row
    unknown = _run(url, "accounts", "add", "4301000002", "--name", "李四", "--phone", "13812345679", "--meter-serial", "00000000000002", "--meter-kind", "iot", "--meter-model", "nope")
    assert unknown.exit_code == 2 and "UNKNOWN_METER_MODEL" in unknown.output and "xq-money" in unknown.output
    bad = _run(url, "meters", "models", "add", "odd", "--credit-unit", "gallons")
    assert bad.exit_code == 2 and "INVALID_METER_MODEL" in bad.output and "Traceback" not in bad.output
    twice = _run(url, "meters", "models", "add", "xq-money")
    assert twice.exit_code != 0 and "METER_MODEL_EXISTS" in twice.output
    other_scheme = _run(url, "meters", "set", "00000000000001", "--model", "cjt188-sm4")
    assert other_scheme.exit_code != 0 and "MODEL_CHANGES_MAC_SCHEME" in other_scheme.output


# ---- the migration that unified the two model notions ------------------------------------------

NOW = "2026-11-24 00:00:00+00:00"


def _old_database(tmp_path, *meters):
    """A database at 0008 with meters as (serial, delivery model or None, frame-security model)."""
    engine = create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(engine, "0008")
    with engine.begin() as c:
        c.execute(text("INSERT INTO meter_models (name, purchase_seq_bytes, reopen_needs_button, created_at) VALUES ('money-1b', 1, 1, :now)"), {"now": NOW})
        for i, (serial, model, security_model) in enumerate(meters):
            c.execute(text("INSERT INTO customers (account_no, name, address, community, grid, phone, customer_class, created_at) VALUES (:a, 'x', '', '', '', '1', 'residential', :now)"), {"a": f"43{i:08d}", "now": NOW})
            c.execute(text("INSERT INTO meters (serial, account_no, kind, status, model) VALUES (:s, :a, 'iot', 'active', :m)"), {"s": serial, "a": f"43{i:08d}", "m": model})
            c.execute(text("INSERT INTO meter_frame_security (serial, model) VALUES (:s, :m)"), {"s": serial, "m": security_model})
    return engine


def test_the_migration_gives_every_meter_one_model_carrying_its_mac_scheme(tmp_path):
    engine = _old_database(tmp_path, ("00000000000001", None, "cjt188-aes"), ("00000000000002", "money-1b", "cjt188-aes"), ("00000000000003", None, "carrier-plain"))
    upgrade(engine)
    with engine.connect() as c:
        models = {r.name: r for r in c.execute(text("SELECT * FROM meter_models"))}
        meters = dict(c.execute(text("SELECT serial, model FROM meters")).all())
        security_columns = [r[1] for r in c.execute(text("PRAGMA table_info(meter_frame_security)"))]
    assert meters == {"00000000000001": "cjt188-aes", "00000000000002": "money-1b", "00000000000003": "carrier-plain"}
    assert models["money-1b"].mac_scheme == MacScheme.AES128_CMAC and models["money-1b"].purchase_seq_bytes == 1
    assert models["cjt188-money"].credit_unit == CreditUnit.FEN and models["cjt188-money"].di_byte_order == DiByteOrder.HIGH_FIRST
    assert {"cjt188-sm4", "cjt188-aes", "carrier-plain", "cjt188-money"} <= models.keys()
    assert "model" not in security_columns
    engine.dispose()


def test_the_migration_stops_rather_than_guess_when_one_model_had_two_mac_schemes(tmp_path):
    engine = _old_database(tmp_path, ("00000000000001", "money-1b", "cjt188-aes"), ("00000000000002", "money-1b", "cjt188-sm4"))
    with pytest.raises(RuntimeError, match="different MAC schemes"):
        upgrade(engine)
    engine.dispose()
