"""API keys for operators, auditors and devices. Only a SHA-256 of each secret is stored."""

import hashlib
import secrets

from gasworks.domain.access import ApiKeyRecord, Role
from gasworks.domain.errors import Forbidden, InvalidInput, NotFound, Unauthorized
from gasworks.services.channels import require_channel
from gasworks.services.unit_of_work import UnitOfWork


def _sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(*, name: str, role: Role, channel_id: str | None, uow: UnitOfWork, actor: str) -> tuple[ApiKeyRecord, str]:
    """Returns the record and the secret, which is shown once and never stored."""
    if role == Role.DEVICE and not channel_id:
        raise InvalidInput("a device key belongs to a kiosk or counter channel (--channel)", code="MISSING_CHANNEL")
    if role != Role.DEVICE and channel_id:
        raise InvalidInput("only device keys belong to a channel", code="UNEXPECTED_CHANNEL")
    with uow:
        if channel_id:
            if not require_channel(uow, channel_id).kind.uses_devices:
                raise InvalidInput(f"{channel_id} is not a kiosk or counter channel", code="WRONG_CHANNEL_KIND")
        key_id = "key_" + secrets.token_hex(6)
        secret = f"gw_{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKeyRecord(key_id, name, role.value, channel_id, uow.clock.now(), None)
        uow.api_keys.add(record, _sha256(secret))
        uow.audit.append(at=uow.clock.now(), actor=actor, action="api_key.create", subject=f"api_key:{key_id}", detail={"name": name, "role": role.value, "channel_id": channel_id})
        uow.commit()
        return record, secret


def revoke_api_key(key_id: str, uow: UnitOfWork, *, actor: str) -> None:
    with uow:
        if uow.api_keys.revoke(key_id, uow.clock.now()) != 1:
            raise NotFound(f"no active key {key_id!r}", code="KEY_NOT_FOUND")
        uow.audit.append(at=uow.clock.now(), actor=actor, action="api_key.revoke", subject=f"api_key:{key_id}", detail={})
        uow.commit()


def list_api_keys(uow: UnitOfWork) -> list[ApiKeyRecord]:
    with uow:
        return uow.api_keys.list()


def authenticate(secret: str | None, allowed: set[Role], uow: UnitOfWork) -> ApiKeyRecord:
    return authorize(identify(secret, uow), allowed)


def identify(secret: str | None, uow: UnitOfWork) -> ApiKeyRecord:
    """Whose key this is (401 if none, unknown or revoked); what it may do is `authorize`'s question."""
    if not secret:
        raise Unauthorized("an API key is required: Authorization: Bearer <key>", code="API_KEY_MISSING")
    with uow:
        record = uow.api_keys.find_by_secret_sha256(_sha256(secret))
    if record is None or record.revoked_at is not None:
        raise Unauthorized("API key unknown or revoked", code="API_KEY_INVALID")
    return record


def authorize(record: ApiKeyRecord, allowed: set[Role]) -> ApiKeyRecord:
    if Role(record.role) not in allowed:
        raise Forbidden(f"role {record.role} may not do this", code="ROLE_FORBIDDEN")
    return record


def actor_of(record: ApiKeyRecord) -> str:
    return f"{record.role}:{record.id}:{record.name}"
