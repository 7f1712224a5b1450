"""Channel messages in: verify with the channel's codec, then take the payment exactly once.

Every refusal raised here is recorded once, at the HTTP edge (entrypoints/api/edge.py), with the
channel, code, body size and body hash, before the reply goes out.
"""

import dataclasses
from collections.abc import Callable
from datetime import datetime

from gasworks.domain.channels import Channel, ChannelKind, InboundRequest, PaymentNotice, RefundNotice
from gasworks.domain.errors import IntakeRefused, NotFound
from gasworks.domain.money import PaymentCeiling
from gasworks.services.accounts import AccountView, get_account
from gasworks.services.cut_retry import NO_RETRY, CutRetry
from gasworks.services.holds import take_channel_refund
from gasworks.services.intake import Acceptance, accept_payment, claim_nonce
from gasworks.services.unit_of_work import UnitOfWork

# A channel kind's codec (adapters/channels): verifies a request as received, returns what it says.
Decoder = Callable[[Channel, InboundRequest, datetime, int], PaymentNotice | RefundNotice]
# A signed request that pays nothing (a bill-payment account query): verified, its nonce returned.
RequestVerifier = Callable[[Channel, InboundRequest, datetime, int], str]


def load_channel(channel_id: str, new_uow: Callable[[], UnitOfWork]) -> Channel:
    """The channel and its keys, as recently as the channel cache allows (see ChannelCache)."""
    channel = new_uow().recent_channel(channel_id)
    if channel is None:
        raise NotFound(f"no channel {channel_id[:40]!r}", code="CHANNEL_NOT_FOUND")
    return channel


def take_channel_payment(
    channel: Channel,
    request: InboundRequest,
    decoders: dict[ChannelKind, Decoder],
    new_uow: Callable[[], UnitOfWork],
    *,
    skew_s: int,
    ceiling: PaymentCeiling | None = None,
    retry: CutRetry = NO_RETRY,
) -> Acceptance:
    """Verify, decode and take one channel message. Merchant-order channels (WeChat Pay, Alipay)
    notify money already taken: above the ceiling it is held. A bill payment is refused instead.
    A refund notification refunds its payment (see `take_channel_refund`).

    Cut off by the database (`retry`), the message is taken again the same way. A nonce found
    used on such a rerun was used by the run that was cut, whose commit therefore happened (or by a
    replay of this very request, which takes the same payment): the rerun then looks the payment
    up by its transaction id without claiming the nonce again, and answers as a duplicate."""
    decode = decoders.get(channel.kind)
    if decode is None:
        raise IntakeRefused(f"a {channel.kind.value} channel does not post here", code="WRONG_ENDPOINT")
    notice = decode(channel, request, new_uow().clock.now(), skew_s)

    def take(after_cut: bool) -> Acceptance:
        try:
            return take_once(notice)
        except IntakeRefused as refused:
            if not (after_cut and refused.code == "NONCE_REUSED"):
                raise
            return take_once(dataclasses.replace(notice, replay_nonce=None))

    def take_once(notice: PaymentNotice | RefundNotice) -> Acceptance:
        if isinstance(notice, RefundNotice):
            return Acceptance.of(take_channel_refund(notice, new_uow()), duplicate=False)
        return accept_payment(notice, new_uow(), ceiling=ceiling, refuse_above_ceiling=not channel.kind.uses_merchant_orders)

    return retry.run(take)


def look_up_account_for_channel(channel: Channel, account_no: str, request: InboundRequest, new_uow: Callable[[], UnitOfWork], *, skew_s: int, verify: RequestVerifier) -> AccountView:
    """The bill-payment query: signed like a payment, answered with masked details only."""
    if channel.kind != ChannelKind.WALLET_HMAC:
        raise IntakeRefused(f"a {channel.kind.value} channel does not query accounts", code="WRONG_ENDPOINT")
    with (uow := new_uow()):
        claim_nonce(uow, channel.id, verify(channel, request, uow.clock.now(), skew_s))
        uow.commit()
    return get_account(account_no, new_uow())
