"""Channel messages in: verify with the channel's codec, then take the payment exactly once."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gasworks.adapters.channels import Decoder, InboundRequest
from gasworks.adapters.channels.wallet_hmac import verify_request
from gasworks.domain.channels import Channel, ChannelKind
from gasworks.domain.errors import GasworksError, IntakeRefused
from gasworks.services.accounts import AccountView, get_account
from gasworks.services.channels import require_channel
from gasworks.services.intake import Acceptance, accept_payment, claim_nonce, record_rejection
from gasworks.services.unit_of_work import UnitOfWork


@contextmanager
def refusals_recorded(channel_id: str, request: InboundRequest, new_uow: Callable[[], UnitOfWork]) -> Iterator[None]:
    """Every expected failure inside is recorded (who, what, why) before it is raised on."""
    try:
        yield
    except GasworksError as error:
        record_rejection(new_uow(), channel_id=channel_id[:40], error=error, request_summary=request.summary(), remote_addr=request.remote_addr)
        raise


def load_channel(channel_id: str, request: InboundRequest, new_uow: Callable[[], UnitOfWork]) -> Channel:
    with refusals_recorded(channel_id, request, new_uow):
        with (uow := new_uow()):
            return require_channel(uow, channel_id)


def take_channel_payment(
    channel: Channel,
    request: InboundRequest,
    decoders: dict[ChannelKind, Decoder],
    new_uow: Callable[[], UnitOfWork],
    *,
    skew_s: int,
) -> Acceptance:
    """Verify, decode and take one channel message."""
    with refusals_recorded(channel.id, request, new_uow):
        decode = decoders.get(channel.kind)
        if decode is None:
            raise IntakeRefused(f"a {channel.kind.value} channel does not post here", code="WRONG_ENDPOINT")
        uow = new_uow()
        return accept_payment(decode(channel, request, uow.clock.now(), skew_s), uow)


def look_up_account_for_channel(
    channel: Channel, account_no: str, request: InboundRequest, new_uow: Callable[[], UnitOfWork], *, skew_s: int
) -> AccountView:
    """The bill-payment query: signed like a payment, answered with masked details only."""
    with refusals_recorded(channel.id, request, new_uow):
        if channel.kind != ChannelKind.WALLET_HMAC:
            raise IntakeRefused(f"a {channel.kind.value} channel does not query accounts", code="WRONG_ENDPOINT")
        with (uow := new_uow()):
            claim_nonce(uow, channel.id, verify_request(channel, request, uow.clock.now(), skew_s))
            uow.commit()
    return get_account(account_no, new_uow())
