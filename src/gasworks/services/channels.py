"""Configuring payment channels and rotating their keys."""

import re

from gasworks.domain.channels import Channel, ChannelKey, ChannelKind, KeyPurpose, KeyStatus
from gasworks.domain.errors import Conflict, InvalidInput, NotFound
from gasworks.domain.ledger import LedgerAccountKind, clearing_account
from gasworks.services.unit_of_work import KeyMaterialChecks, UnitOfWork

_CHANNEL_ID = re.compile(r"^[a-z0-9][a-z0-9-]{1,39}$")

# What each kind needs to verify its messages. Kiosks and counters use device API keys instead.
REQUIRED_KEYS = {
    ChannelKind.WECHATPAY_V3: (KeyPurpose.VERIFY_PUBLIC_KEY, KeyPurpose.APIV3_KEY),
    ChannelKind.ALIPAY: (KeyPurpose.VERIFY_PUBLIC_KEY,),
    ChannelKind.WALLET_HMAC: (KeyPurpose.HMAC_SECRET,),
    ChannelKind.KIOSK: (),
    ChannelKind.COUNTER: (),
}
# Keys a kind may have beyond those: our own signing key for calling the channel (services/outbound.py).
OPTIONAL_KEYS = {ChannelKind.WECHATPAY_V3: (KeyPurpose.SIGNING_KEY,), ChannelKind.ALIPAY: (KeyPurpose.SIGNING_KEY,)}


def check_key_material(purpose: KeyPurpose, material: str, checks: KeyMaterialChecks) -> None:
    if purpose == KeyPurpose.VERIFY_PUBLIC_KEY:
        try:
            checks.public_key_pem(material)
        except ValueError as error:
            raise InvalidInput(f"not an RSA public key in PEM: {error}", code="INVALID_KEY") from None
    elif purpose == KeyPurpose.SIGNING_KEY:
        try:
            checks.private_key_pem(material)
        except ValueError as error:
            raise InvalidInput(f"not an RSA private key in PEM (unencrypted PKCS#8 or PKCS#1): {error}", code="INVALID_KEY") from None
    elif purpose == KeyPurpose.APIV3_KEY and len(material.encode()) != 32:
        raise InvalidInput("a WeChat Pay APIv3 key is exactly 32 bytes", code="INVALID_KEY")
    elif purpose == KeyPurpose.HMAC_SECRET and len(material.encode()) < 32:
        raise InvalidInput("an HMAC secret must be at least 32 bytes", code="INVALID_KEY")


def add_channel(
    *,
    channel_id: str,
    kind: ChannelKind,
    name: str,
    merchant_id: str,
    keys: list[tuple[KeyPurpose, str, str]],  # (purpose, key id, material)
    uow: UnitOfWork,
    actor: str,
    fee_ppm: int = 0,
) -> Channel:
    if not 0 <= fee_ppm <= 100_000:
        raise InvalidInput("a channel's fee is 0 to 100,000 parts per million (0 to 10 %)", code="INVALID_FEE")
    if not _CHANNEL_ID.match(channel_id):
        raise InvalidInput("channel id: 2-40 lower-case letters, digits and dashes", code="INVALID_CHANNEL_ID")
    given = {purpose for purpose, _, _ in keys}
    missing = [p.value for p in REQUIRED_KEYS[kind] if p not in given]
    if missing:
        raise InvalidInput(f"a {kind.value} channel needs keys: {', '.join(missing)}", code="MISSING_KEY")
    for purpose, _, material in keys:
        check_key_material(purpose, material, uow.key_checks)
    with uow:
        if uow.channels.get(channel_id) is not None:
            raise Conflict(f"channel {channel_id} already exists", code="CHANNEL_EXISTS")
        now = uow.clock.now()
        channel = Channel(
            id=channel_id,
            kind=kind,
            name=name,
            merchant_id=merchant_id,
            fee_ppm=fee_ppm,
            keys=tuple(ChannelKey(channel_id, key_id, purpose, material, KeyStatus.ACTIVE, now) for purpose, key_id, material in keys),
        )
        uow.channels.add(channel, now)
        uow.ledger.open_account(clearing_account(channel_id), LedgerAccountKind.CLEARING)
        uow.audit.append(
            at=now,
            actor=actor,
            action="channel.add",
            subject=f"channel:{channel_id}",
            detail={"kind": kind.value, "key_ids": [key_id for _, key_id, _ in keys]},
        )
        uow.commit()
        return channel


def add_key(*, channel_id: str, purpose: KeyPurpose, key_id: str, material: str, uow: UnitOfWork, actor: str) -> None:
    """Start a rollover: the new key is valid alongside the old until the old is retired."""
    check_key_material(purpose, material, uow.key_checks)
    with uow:
        channel = require_channel(uow, channel_id)
        if purpose not in REQUIRED_KEYS[channel.kind] + OPTIONAL_KEYS.get(channel.kind, ()):
            raise InvalidInput(f"a {channel.kind.value} channel has no {purpose.value} keys", code="INVALID_KEY")
        if any(k.key_id == key_id and k.purpose == purpose for k in channel.keys):
            raise Conflict(f"key {key_id} already exists on {channel_id}", code="KEY_EXISTS")
        if len(channel.active_keys(purpose)) >= 2:
            raise Conflict(f"{channel_id} already has two active {purpose.value} keys; retire one first", code="TOO_MANY_KEYS")
        now = uow.clock.now()
        uow.channels.add_key(ChannelKey(channel_id, key_id, purpose, material, KeyStatus.ACTIVE, now))
        uow.audit.append(at=now, actor=actor, action="channel.key.add", subject=f"channel:{channel_id}", detail={"key_id": key_id, "purpose": purpose.value})
        uow.commit()


def seal_stored_keys(uow: UnitOfWork, *, actor: str) -> int:
    """Seal the channels' secret keys stored in the clear before gasworks sealed them (safe to run again)."""
    with uow:
        sealed = uow.channels.seal_plain_keys()
        if sealed:
            uow.audit.append(at=uow.clock.now(), actor=actor, action="channel.keys.sealed", subject="channels", detail={"keys": sealed})
        uow.commit()
    return sealed


def retire_key(*, channel_id: str, key_id: str, uow: UnitOfWork, actor: str) -> None:
    with uow:
        channel = require_channel(uow, channel_id)
        retiring = [k for k in channel.keys if k.key_id == key_id and k.status == KeyStatus.ACTIVE]
        if not retiring:
            raise NotFound(f"no active key {key_id} on {channel_id}", code="KEY_NOT_FOUND")
        for key in retiring:
            if len(channel.active_keys(key.purpose)) == 1:
                raise Conflict(
                    f"{key_id} is the last active {key.purpose.value} key of {channel_id}; add its successor first",
                    code="LAST_KEY",
                )
        now = uow.clock.now()
        uow.channels.retire_key(channel_id, key_id, now)
        uow.audit.append(at=now, actor=actor, action="channel.key.retire", subject=f"channel:{channel_id}", detail={"key_id": key_id})
        uow.commit()


def get_channel(channel_id: str, uow: UnitOfWork) -> Channel:
    with uow:
        return require_channel(uow, channel_id)


def list_channels(uow: UnitOfWork) -> list[Channel]:
    with uow:
        return uow.channels.list()


def require_channel(uow: UnitOfWork, channel_id: str) -> Channel:
    channel = uow.channels.get(channel_id)
    if channel is None:
        raise NotFound(f"no channel {channel_id[:40]!r}", code="CHANNEL_NOT_FOUND")
    return channel
