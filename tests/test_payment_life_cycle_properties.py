"""Random sequences of bookings, holds, decisions, reversals, adjustments, refunds, purchases and
applications: after every step `gasworks check` passes and money in = balances + suspense +
delivery + revenue + refunds in flight, to the fen (hypothesis, stateful). On the in-memory fakes
(tests/fakes.py) and on SQLite: the same machine."""

import itertools
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule, run_state_machine_as_test

from gasworks.domain.channels import PaymentNotice
from gasworks.domain.clock import FixedClock
from gasworks.domain.ledger import LedgerAccountKind
from gasworks.domain.payments import TRANSITIONS, IllegalTransition, PaymentState
from gasworks.services import holds
from gasworks.services.checks import check_ledger
from gasworks.services.intake import accept_payment
from gasworks.services.payment_life_cycle import require_payment, settle
from tests.conftest import START, make_system
from tests.fakes import FakeSystem
from tests.support import ACCOUNT_NO, OTHER_ACCOUNT_NO, set_up
from tests.test_payment_life_cycle import write_card_and_insert_it

ACCOUNTS = [ACCOUNT_NO, OTHER_ACCOUNT_NO, "9999999999"]  # IoT meter, card meter, no such account
TXNS = itertools.count()
STEPS = itertools.count(1)


class PaymentBooks(RuleBasedStateMachine):
    template: Path | None  # a migrated SQLite file to copy, or None: the in-memory fakes

    def __init__(self) -> None:
        super().__init__()
        self.workdir = Path(tempfile.mkdtemp(prefix="gasworks-books-"))
        if self.template is None:
            self.system = FakeSystem(FixedClock(START))
        else:
            shutil.copy(self.template, self.workdir / "gasworks.db")
            self.system = make_system(f"sqlite:///{self.workdir / 'gasworks.db'}", FixedClock(START))
        self.payments: list[str] = []
        self.money_in_fen = 0  # what the channel collected and still owes us: payments less what went back

    @initialize()
    def channels_and_accounts(self) -> None:
        set_up(self.system)

    def teardown(self) -> None:
        engine = getattr(self.system, "engine", None)
        if engine is not None:
            engine.dispose()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _decide(self, index: int, target: PaymentState, act, only_from: set[PaymentState] | None = None) -> None:  # noqa: ANN001
        if not self.payments:
            return
        payment_id = self.payments[-1 - index % len(self.payments)]  # mostly the newest few: decisions pile up on them
        with self.system.new_uow() as uow:
            before = require_payment(uow, payment_id)
            net_before = uow.ledger.payment_net_fen(payment_id)
        try:
            act(payment_id)
        except IllegalTransition:
            legal = (before.state, target) in TRANSITIONS and (only_from is None or before.state in only_from)
            assert not legal or target == PaymentState.ADJUSTED, f"{before.state} -> {target} is legal but was refused"
            return
        assert (before.state, target) in TRANSITIONS, f"{before.state} -> {target} is not in the life cycle but happened"
        assert only_from is None or before.state in only_from, f"{act} is not for a payment that is {before.state}"
        with self.system.new_uow() as uow:
            self.money_in_fen += uow.ledger.payment_net_fen(payment_id) - net_before

    @rule(account=st.sampled_from(ACCOUNTS), amount_fen=st.integers(1, 200_000), retry=st.booleans())
    def pay(self, account: str, amount_fen: int, retry: bool) -> None:
        txn = f"T{next(TXNS)}"
        notice = PaymentNotice("wo-wallet", txn, amount_fen, None, account_no=account)
        taken = accept_payment(notice, self.system.new_uow())
        if retry:
            assert accept_payment(notice, self.system.new_uow()).payment_id == taken.payment_id
        self.payments.append(taken.payment_id)
        self.money_in_fen += amount_fen

    @rule(index=st.integers(0, 3), account=st.sampled_from(ACCOUNTS[:2]))
    def credit_hold(self, index: int, account: str) -> None:
        self._decide(index, PaymentState.BOOKED, lambda p: holds.decide_hold(p, holds.HoldDecision.CREDIT, reason="found", account_no=account, uow=self.system.new_uow(), actor="op"))

    @rule(index=st.integers(0, 3))
    def refund_hold(self, index: int) -> None:
        self._decide(index, PaymentState.REFUND_REQUESTED, lambda p: holds.decide_hold(p, holds.HoldDecision.REFUND, reason="unknown", uow=self.system.new_uow(), actor="op"))

    @rule(index=st.integers(0, 3))
    def confirm_refund(self, index: int) -> None:
        self._decide(index, PaymentState.REFUNDED, lambda p: holds.confirm_refund(p, evidence="channel refund id", uow=self.system.new_uow(), actor="op"), {PaymentState.REFUND_REQUESTED})

    @rule(index=st.integers(0, 3))
    def external_refund(self, index: int) -> None:
        self._decide(
            index, PaymentState.REFUNDED, lambda p: holds.record_external_refund(p, evidence="statement", uow=self.system.new_uow(), actor="op"),
            {PaymentState.BOOKED, PaymentState.HELD, PaymentState.ADJUSTED},
        )  # fmt: skip

    def _settle(self, payment_id: str, target: PaymentState, amount_fen: int | None = None) -> None:
        with self.system.new_uow() as uow:
            payment = require_payment(uow, payment_id)
            if amount_fen is not None and uow.ledger.payment_net_fen(payment_id) + amount_fen <= 0:
                raise IllegalTransition("an adjustment leaves a positive amount", code="TEST_SKIPPED")
            settle(uow, payment, target, at=uow.clock.now(), note="reconciliation", actor="op", action=f"payment.{target}", detail={}, amount_fen=amount_fen)
            uow.commit()

    @rule(index=st.integers(0, 3))
    def reverse(self, index: int) -> None:
        self._decide(index, PaymentState.REVERSED, lambda p: self._settle(p, PaymentState.REVERSED))

    @rule(index=st.integers(0, 3), difference_fen=st.integers(-5_000, 5_000).filter(bool))
    def adjust(self, index: int, difference_fen: int) -> None:
        self._decide(index, PaymentState.ADJUSTED, lambda p: self._settle(p, PaymentState.ADJUSTED, difference_fen))

    @rule()
    def card_written_and_applied(self) -> None:
        write_card_and_insert_it(self.system)

    @invariant()
    def books_hold(self) -> None:
        next(STEPS)
        report = check_ledger(self.system.new_uow())
        assert report.ok, report.findings
        totals = report.totals_by_kind_fen
        placed = -sum(totals.get(k.value, 0) for k in (LedgerAccountKind.PREPAID, LedgerAccountKind.SUSPENSE, LedgerAccountKind.DELIVERY, LedgerAccountKind.REVENUE, LedgerAccountKind.REFUNDS))
        assert totals.get(LedgerAccountKind.CLEARING.value, 0) == self.money_in_fen == placed


@pytest.mark.parametrize("store", ["fake", "sqlite"])
def test_any_sequence_of_money_decisions_keeps_the_books(store: str, request: pytest.FixtureRequest) -> None:
    PaymentBooks.template = None if store == "fake" else request.getfixturevalue("sqlite_template")
    first_step = next(STEPS)
    run_state_machine_as_test(
        PaymentBooks,
        settings=settings(max_examples=30, stateful_step_count=25, deadline=None, suppress_health_check=list(HealthCheck)),
    )
    steps = next(STEPS) - first_step - 1
    print(f"payment life cycle: {steps} steps checked")  # the closing note quotes this count
    assert steps > 100, "the machine must actually run"


@pytest.fixture(autouse=True)
def _quiet_logs(caplog):  # noqa: ANN001, ANN202
    caplog.set_level("WARNING")
