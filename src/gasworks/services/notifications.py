"""Channel messages in: verify with the channel's codec, then take the payment exactly once."""

from collections.abc import Callable

from gasworks.adapters.channels import Decoder, InboundRequest
from gasworks.adapters.channels.wallet_hmac import verify_request
from gasworks.adapters.db.repositories import DuplicateKey
from gasworks.domain.channels import Channel, ChannelKind
from gasworks.domain.errors import GasworksError, IntakeRefused, NotFound
from gasworks.services.accounts import AccountView, get_account
from gasworks.services.intake import Acceptance, accept_payment, record_rejection
from gasworks.services.unit_of_work import UnitOfWork


def load_channel(channel_id: str, request: InboundRequest, new_uow: Callable[[], UnitOfWork]) -> Channel:
    with (uow := new_uow()):
        channel = uow.channels.get(channel_id)
    if channel is None:
        error = NotFound(f"no channel {channel_id[:40]!r}", code="CHANNEL_NOT_FOUND")
        record_rejection(new_uow(), channel_id=channel_id[:40], error=error, request_summary=request.summary(), remote_addr=request.remote_addr)
        raise error
    return channel


def take_channel_payment(
    channel: Channel,
    request: InboundRequest,
    decoders: dict[ChannelKind, Decoder],
    new_uow: Callable[[], UnitOfWork],
    *,
    skew_s: int,
) -> Acceptance:
    """Verify, decode and take one channel message; every refusal is recorded before it is raised."""
    try:
        decode = decoders.get(channel.kind)
        if decode is None:
            raise IntakeRefused(f"a {channel.kind.value} channel does not post here", code="WRONG_ENDPOINT")
        uow = new_uow()
        notice = decode(channel, request, uow.clock.now(), skew_s)
        return accept_payment(notice, uow)
    except GasworksError as error:
        record_rejection(new_uow(), channel_id=channel.id, error=error, request_summary=request.summary(), remote_addr=request.remote_addr)
        raise


def look_up_account_for_channel(
    channel: Channel, account_no: str, request: InboundRequest, new_uow: Callable[[], UnitOfWork], *, skew_s: int
) -> AccountView:
    """The bill-payment query: signed like a payment, answered with masked details only."""
    try:
        if channel.kind != ChannelKind.WALLET_HMAC:
            raise IntakeRefused(f"a {channel.kind.value} channel does not query accounts", code="WRONG_ENDPOINT")
        with (uow := new_uow()):
            nonce = verify_request(channel, request, uow.clock.now(), skew_s)
            try:
                uow.nonces.claim(channel.id, nonce, uow.clock.now())
            except DuplicateKey:
                raise IntakeRefused(f"nonce {nonce!r} was already used on this channel", code="NONCE_REUSED") from None
            uow.commit()
    except GasworksError as error:
        record_rejection(new_uow(), channel_id=channel.id, error=error, request_summary=request.summary(), remote_addr=request.remote_addr)
        raise
    return get_account(account_no, new_uow())
