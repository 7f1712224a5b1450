"""Channels' secrets at rest: HMAC secrets, WeChat Pay's APIv3 key and our own private keys are
stored sealed under the site key (as meter keys are), read back for use, and never found in the
clear in the database; a key stored in the clear by an older gasworks is sealed by `db upgrade`."""

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from typer.testing import CliRunner

from gasworks.adapters.db import tables as t
from gasworks.bootstrap import bootstrap
from gasworks.config import Settings
from gasworks.domain.channels import KeyPurpose
from gasworks.domain.meter_security import SiteKeyMismatch
from gasworks.entrypoints.api.app import create_app
from gasworks.entrypoints.cli.main import app as cli
from gasworks.services import channels as channel_admin
from tests.support import ACCOUNT_NO, APIV3_KEY, WALLET_SECRET, rsa_private_key, set_up

SITE_KEY = "33" * 32


def stored_keys(system) -> dict[tuple[str, str], str]:
    with system.engine.connect() as c:
        return {(r.channel_id, r.purpose): r.material for r in c.execute(select(t.channel_keys))}


def test_channel_secrets_are_sealed_at_rest_and_work_as_before(database_url, clock):
    system = bootstrap(Settings(database_url=database_url, site_key=SITE_KEY), clock=clock)
    try:
        notifiers = set_up(system)
        channel_admin.add_key(channel_id="wechat", purpose=KeyPurpose.SIGNING_KEY, key_id="MERCHANT-1", material=rsa_private_key("merchant"), uow=system.new_uow(), actor="test")
        stored = stored_keys(system)
        for secret_key, secret in ((("wo-wallet", "hmac"), WALLET_SECRET), (("wechat", "apiv3"), APIV3_KEY), (("wechat", "sign"), rsa_private_key("merchant"))):
            assert stored[secret_key].startswith("sealed:v1:") and secret not in stored[secret_key]
        assert "BEGIN PUBLIC KEY" in stored[("wechat", "verify")]  # a public key stays as it is
        with system.new_uow() as uow:
            assert uow.channels.get("wechat").active_keys(KeyPurpose.SIGNING_KEY)[0].material == rsa_private_key("merchant")
        path = "/v1/channels/wo-wallet/payments"
        headers, body = notifiers.wallet.payment(path=path, txn_id="SEALED-1", account_no=ACCOUNT_NO, amount_fen=1_000, at=clock.now())
        assert TestClient(create_app(system)).post(path, content=body, headers=headers).status_code == 200  # the sealed secret verifies
    finally:
        system.engine.dispose()


def test_a_secret_stored_in_the_clear_is_sealed_by_db_upgrade_and_another_site_key_cannot_open_it(database_url, clock):
    system = bootstrap(Settings(database_url=database_url, site_key=SITE_KEY), clock=clock)
    other = bootstrap(Settings(database_url=database_url, site_key="44" * 32), clock=clock)
    try:
        set_up(system)
        with system.engine.begin() as c:  # as an older gasworks wrote it
            c.execute(update(t.channel_keys).where(t.channel_keys.c.purpose == "hmac").values(material=WALLET_SECRET))
        with system.new_uow() as uow:
            assert uow.channels.get("wo-wallet").active_keys(KeyPurpose.HMAC_SECRET)[0].material == WALLET_SECRET  # still readable
        upgraded = CliRunner().invoke(cli, ["db", "upgrade", "--database-url", database_url], env={"GASWORKS_SITE_KEY": SITE_KEY})
        assert upgraded.exit_code == 0, upgraded.output
        assert stored_keys(system)[("wo-wallet", "hmac")].startswith("sealed:v1:")
        again = CliRunner().invoke(cli, ["channels", "seal-keys", "--database-url", database_url], env={"GASWORKS_SITE_KEY": SITE_KEY})
        assert again.exit_code == 0 and "sealed already" in again.output
        with system.new_uow() as uow:
            assert uow.channels.get("wo-wallet").active_keys(KeyPurpose.HMAC_SECRET)[0].material == WALLET_SECRET
            assert uow.audit.count_actions("channel.keys.sealed") == 1
        with pytest.raises(SiteKeyMismatch), other.new_uow() as uow:
            uow.channels.get("wo-wallet")
        listed = CliRunner().invoke(cli, ["channels", "list", "--database-url", database_url], env={"GASWORKS_SITE_KEY": "44" * 32})
        assert listed.exit_code == 2 and "SITE_KEY_MISMATCH" in listed.output
    finally:
        system.engine.dispose()
        other.engine.dispose()
