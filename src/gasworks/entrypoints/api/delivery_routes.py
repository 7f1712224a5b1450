"""HTTP routes for meter delivery: payment timelines, card desks, meters, commands, tariffs, kiosks, alerts."""

from collections.abc import Callable

from fastapi import APIRouter, Depends, Query, Request

from gasworks.bootstrap import System
from gasworks.domain.access import ApiKeyRecord
from gasworks.domain.delivery import CommandState, MeterModel
from gasworks.domain.errors import InvalidInput
from gasworks.domain.kiosks import Kiosk
from gasworks.entrypoints.api import delivery_schemas as d
from gasworks.entrypoints.api import schemas as s
from gasworks.entrypoints.api.common import READERS
from gasworks.entrypoints.api.schemas import RowId
from gasworks.services import cards, delivery, kiosks, tariffs, timeline
from gasworks.services.access import Role, actor_of


def resident_url(system: System, request: Request | None, payment_id: str) -> str:
    token = timeline.resident_token(system.resident_link_secret, payment_id)
    base = system.settings.public_base_url.rstrip("/") or (str(request.base_url).rstrip("/") if request else "")
    return f"{base}/p/{payment_id}?t={token}"


def delivery_routes(system: System, caller: Callable[..., Callable[..., ApiKeyRecord]], errors: dict) -> APIRouter:
    router = APIRouter(responses=errors)
    settings = system.settings
    new_uow = system.new_uow

    @router.get("/v1/payments/{payment_id}", tags=["payments"], response_model=d.PaymentDeliveryOut)
    def get_payment(payment_id: str, request: Request, who: ApiKeyRecord = Depends(caller(*READERS))) -> d.PaymentDeliveryOut:
        """A payment and its whole way to the meter: paid, booked, sent or written to card, applied."""
        t = timeline.payment_timeline(payment_id, new_uow(), hotline=settings.service_hotline)
        return d.PaymentDeliveryOut(**s.PaymentOut.of(t.payment).model_dump(), delivery=d.DeliveryOut.of(t, resident_url(system, request, payment_id)))

    # --- card desks: kiosks and counters --------------------------------------------------------

    @router.post("/v1/cards/reads", tags=["cards"], response_model=d.CardReadOut)
    def card_read(body: d.CardReadIn, device: ApiKeyRecord = Depends(caller(Role.DEVICE, Role.OPERATOR))) -> d.CardReadOut:
        """A device read a card: gasworks settles what the card shows and answers what to write, in order."""
        answer = cards.read_card(cards.CardRead(**body.model_dump()), new_uow(), actor=actor_of(device))
        return d.CardReadOut(
            account_no=answer.account_no, meter_serial=answer.meter_serial, card_no=answer.card_no,
            to_write=[d.CardPurchaseOut(order_id=o.id or 0, purchase_seq=o.purchase_seq or 0, volume_litres=o.volume_litres or 0) for o in answer.to_write],
            applied_now=[o.purchase_seq or 0 for o in answer.applied_now],
        )  # fmt: skip

    @router.post("/v1/cards/writes", tags=["cards"], response_model=d.CardWriteOut)
    def card_write(body: d.CardWriteIn, device: ApiKeyRecord = Depends(caller(Role.DEVICE, Role.OPERATOR))) -> d.CardWriteOut:
        """The device wrote one purchase to the card. A replayed confirmation changes nothing."""
        order, changed = cards.confirm_card_write(cards.CardWrite(**body.model_dump()), new_uow(), actor=actor_of(device))
        return d.CardWriteOut(order_id=order.id or 0, purchase_seq=order.purchase_seq or 0, state=order.state.value, changed=changed)

    @router.post("/v1/meters/{serial}/card", tags=["cards"], response_model=d.CardReplaceOut)
    def card_replace(serial: str, body: d.CardReplaceIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.CardReplaceOut:
        """Issue a replacement card (补卡): counters carry over; unapplied purchases are written again."""
        done = cards.replace_card(serial, body.card_no, new_uow(), actor=actor_of(who), reason=body.reason)
        return d.CardReplaceOut(**done.__dict__)

    # --- meters and their commands --------------------------------------------------------------

    @router.get("/v1/meters/{serial}", tags=["meters"], response_model=d.MeterOut)
    def get_meter(serial: str, who: ApiKeyRecord = Depends(caller(*READERS))) -> d.MeterOut:
        meter = delivery.get_meter(serial, new_uow())
        return d.MeterOut.of(meter.link, meter.commands)

    @router.patch("/v1/meters/{serial}", tags=["meters"], response_model=d.MeterOut)
    def set_meter(serial: str, body: d.MeterSettingsIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.MeterOut:
        """A meter's model (its serial width and button setting come with it) and whether its valve needs the resident's button to reopen."""
        delivery.set_meter(serial, new_uow(), actor=actor_of(who), model=body.model, reopen_needs_button=body.reopen_needs_button)
        return get_meter(serial, who)

    @router.post("/v1/meters/{serial}/valve/close", tags=["meters"], response_model=d.MeterOut)
    def close_valve(serial: str, body: d.ValveCloseIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.MeterOut:
        """Close a valve for arrears, a hazard stop or another reason; it reopens only when every reason is cleared."""
        delivery.close_valve(serial, body.reason, new_uow(), actor=actor_of(who), note=body.note)
        return get_meter(serial, who)

    @router.post("/v1/meters/{serial}/valve/resolutions", tags=["meters"], response_model=d.MeterOut)
    def resolve_valve(serial: str, body: d.ValveResolutionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.MeterOut:
        """A technician's (or operator's) recorded resolution of one reason the valve is closed; audited."""
        delivery.resolve_valve_reason(serial, body.reason, new_uow(), actor=actor_of(who), note=body.note)
        return get_meter(serial, who)

    @router.get("/v1/meter-models", tags=["meters"], response_model=list[d.MeterModelOut])
    def list_meter_models(who: ApiKeyRecord = Depends(caller(*READERS))) -> list[d.MeterModelOut]:
        return [d.MeterModelOut.of(m) for m in delivery.list_meter_models(new_uow())]

    @router.post("/v1/meter-models", tags=["meters"], response_model=d.MeterModelOut, status_code=201)
    def add_meter_model(body: d.MeterModelIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.MeterModelOut:
        return d.MeterModelOut.of(delivery.add_meter_model(MeterModel(**body.model_dump()), new_uow(), actor=actor_of(who)))

    @router.patch("/v1/meter-models/{name}", tags=["meters"], response_model=d.MeterModelOut)
    def set_meter_model(name: str, body: d.MeterModelSettingsIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.MeterModelOut:
        """Every meter of the model follows (a single meter can be set otherwise afterwards)."""
        changed = delivery.set_model_reopen_needs_button(name, body.reopen_needs_button, new_uow(), actor=actor_of(who))
        return d.MeterModelOut.of(delivery.get_meter_model(name, new_uow()), changed)

    @router.get("/v1/commands", tags=["meters"], response_model=list[d.CommandOut])
    def list_commands(
        state: list[str] = Query(default=[]), meter_serial: str | None = None,
        limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS)),
    ) -> list[d.CommandOut]:  # fmt: skip
        """Meter commands, newest first; e.g. ?state=failed&state=expired for the ones an operator must see."""
        try:
            states = [CommandState(x) for x in state]
        except ValueError:
            raise InvalidInput(f"state must be among {', '.join(CommandState)}", code="INVALID_STATE") from None
        return [d.CommandOut.of(c) for c in delivery.list_commands(new_uow(), limit=limit, states=states, serial=meter_serial)]

    @router.get("/v1/commands/{command_id}", tags=["meters"], response_model=d.CommandOut)
    def get_command(command_id: RowId, who: ApiKeyRecord = Depends(caller(*READERS))) -> d.CommandOut:
        return d.CommandOut.of(delivery.get_command(command_id, new_uow()))

    @router.post("/v1/commands/{command_id}/reissue", tags=["meters"], response_model=d.CommandOut)
    def reissue(command_id: RowId, body: d.OperatorActionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.CommandOut:
        delivery.reissue_command(command_id, new_uow(), actor=actor_of(who), reason=body.reason)
        return get_command(command_id, who)

    @router.post("/v1/commands/{command_id}/cancel", tags=["meters"], response_model=d.CommandOut)
    def cancel(command_id: RowId, body: d.OperatorActionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.CommandOut:
        delivery.cancel_command(command_id, new_uow(), actor=actor_of(who), reason=body.reason)
        return get_command(command_id, who)

    @router.get("/v1/alerts", tags=["meters"], response_model=list[d.AlertOut])
    def list_alerts(
        open_only: bool = True, subject: str | None = None,
        limit: int = Query(100, ge=1, le=settings.page_size_max), who: ApiKeyRecord = Depends(caller(*READERS)),
    ) -> list[d.AlertOut]:  # fmt: skip
        """Deliveries and meters that need a person: expired or refused commands, late purchases, offline meters, alarms."""
        return [d.AlertOut.of(a) for a in delivery.list_alerts(new_uow(), limit=limit, open_only=open_only, subject=subject)]

    @router.post("/v1/alerts/{alert_id}/resolution", tags=["meters"], response_model=d.AlertOut)
    def resolve_alert(alert_id: RowId, body: d.AlertResolutionIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.AlertOut:
        """A person's recorded resolution closes an alert only a person can close (see its cleared_by); audited."""
        return d.AlertOut.of(delivery.resolve_alert(alert_id, new_uow(), actor=actor_of(who), note=body.note))

    # --- tariffs and kiosks ---------------------------------------------------------------------

    @router.get("/v1/tariffs", tags=["tariffs"], response_model=list[d.TariffOut])
    def list_tariffs(who: ApiKeyRecord = Depends(caller(*READERS))) -> list[d.TariffOut]:
        return [d.TariffOut.of(t) for t in tariffs.list_tariffs(new_uow())]

    @router.post("/v1/tariffs", tags=["tariffs"], response_model=d.TariffOut, status_code=201)
    def add_tariff(body: d.TariffIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.TariffOut:
        """A new tariff version from its effective date; earlier purchases keep the prices they were made at."""
        added = tariffs.add_tariff(
            customer_class=body.customer_class, effective_from=body.effective_from, tiers=[(t.upto_m3, t.price_yuan_per_m3) for t in body.tiers],
            year_start_month=body.year_start_month, year_start_day=body.year_start_day, uow=new_uow(), actor=actor_of(who),
        )  # fmt: skip
        return d.TariffOut.of(added)

    @router.get("/v1/kiosks", tags=["kiosks"], response_model=list[d.KioskOut])
    def list_kiosks(status: str | None = None) -> list[d.KioskOut]:
        """Public: where residents can write their cards."""
        return [d.KioskOut.of(k) for k in kiosks.list_kiosks(new_uow(), status=status)]

    @router.post("/v1/kiosks", tags=["kiosks"], response_model=d.KioskOut, status_code=201)
    def add_kiosk(body: d.KioskIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR))) -> d.KioskOut:
        return d.KioskOut.of(kiosks.add_kiosk(Kiosk(**body.model_dump()), new_uow(), actor=actor_of(who)))

    @router.put("/v1/kiosks/{kiosk_id}/status", tags=["kiosks"], status_code=204)
    def kiosk_status(kiosk_id: str, body: d.KioskStatusIn, who: ApiKeyRecord = Depends(caller(Role.OPERATOR, Role.DEVICE))) -> None:
        kiosks.set_kiosk_status(kiosk_id, kiosks.KioskStatus(body.status), new_uow(), actor=actor_of(who))

    return router
