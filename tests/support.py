"""Test helpers: channels with real keys, accounts, and the channels' own signers."""

import functools
from dataclasses import dataclass

from gasworks.adapters.channels.alipay import AlipayNotifier
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem
from gasworks.adapters.channels.wallet_hmac import WalletClient
from gasworks.adapters.channels.wechatpay_v3 import WechatPayV3Notifier
from gasworks.adapters.meters import cjt188
from gasworks.bootstrap import System
from gasworks.domain.accounts import MeterKind
from gasworks.domain.channels import ChannelKind, KeyPurpose
from gasworks.domain.errors import MalformedFrame
from gasworks.services import access, accounts, channels
from gasworks.services.access import Role
from gasworks.services.delivery import UplinkOutcome, handle_uplink, refuse_unreadable_frame
from gasworks.services.unit_of_work import UnitOfWork
from gasworks.sim.stubs.serving import served_in_thread  # noqa: F401 - the tests' name for it

WECHAT_MCHID = "1900000109"
ALIPAY_APP_ID = "2021000000000001"
APIV3_KEY = "0123456789abcdef0123456789ABCDEF"
WALLET_SECRET = "wallet-secret-0123456789-abcdefghij"
ACCOUNT_NO = "4301000001"
OTHER_ACCOUNT_NO = "4301000002"


@functools.cache
def rsa_private_key(name: str) -> str:
    return new_private_key_pem()


@dataclass
class Channels:
    wechat: WechatPayV3Notifier
    alipay: AlipayNotifier
    wallet: WalletClient


def set_up(system: System) -> Channels:
    """Three channels, a kiosk, and two accounts (one IoT, one card meter)."""
    new_uow = system.new_uow
    channels.add_channel(
        channel_id="wechat",
        kind=ChannelKind.WECHATPAY_V3,
        name="WeChat Pay",
        merchant_id=WECHAT_MCHID,
        keys=[(KeyPurpose.VERIFY_PUBLIC_KEY, "PUB_KEY_ID_1", public_key_pem(rsa_private_key("wechat"))), (KeyPurpose.APIV3_KEY, "apiv3-1", APIV3_KEY)],
        uow=new_uow(),
        actor="test",
    )
    channels.add_channel(
        channel_id="alipay",
        kind=ChannelKind.ALIPAY,
        name="Alipay",
        merchant_id=ALIPAY_APP_ID,
        keys=[(KeyPurpose.VERIFY_PUBLIC_KEY, "alipay-1", public_key_pem(rsa_private_key("alipay")))],
        uow=new_uow(),
        actor="test",
    )
    channels.add_channel(
        channel_id="wo-wallet",
        kind=ChannelKind.WALLET_HMAC,
        name="Wo Wallet",
        merchant_id="",
        keys=[(KeyPurpose.HMAC_SECRET, "wo-1", WALLET_SECRET)],
        uow=new_uow(),
        actor="test",
    )
    channels.add_channel(channel_id="kiosk", kind=ChannelKind.KIOSK, name="Kiosks", merchant_id="", keys=[], uow=new_uow(), actor="test")
    for account_no, serial, kind in ((ACCOUNT_NO, "00000000000001", MeterKind.IOT), (OTHER_ACCOUNT_NO, "00000000000002", MeterKind.CARD)):
        accounts.open_account(accounts.OpenAccount(account_no, "张三丰", "蒸湘区 1 栋 101", "华新苑", "G-01", "13812345678", serial, kind), new_uow(), actor="test")
    return Channels(
        wechat=WechatPayV3Notifier(platform_private_key_pem=rsa_private_key("wechat"), serial="PUB_KEY_ID_1", apiv3_key=APIV3_KEY, mchid=WECHAT_MCHID),
        alipay=AlipayNotifier(alipay_private_key_pem=rsa_private_key("alipay"), app_id=ALIPAY_APP_ID),
        wallet=WalletClient(key_id="wo-1", secret=WALLET_SECRET),
    )


def api_key(system: System, role: Role, channel_id: str | None = None) -> str:
    _, secret = access.create_api_key(name=f"test-{role.value}", role=role, channel_id=channel_id, uow=system.new_uow(), actor="test")
    return secret


def balance_fen(system: System, account_no: str) -> int:
    return accounts.get_account(account_no, system.new_uow()).balance_fen


def credited_fen(system: System, account_no: str) -> int:
    """Money placed for the account: on its balance, or already turned into gas for its meter."""
    with system.new_uow() as uow:
        purchases = uow.ledger.purchases_fen(account_no)
    return balance_fen(system, account_no) + purchases


def handle_frame(topic_serial: str, payload: bytes, uow: UnitOfWork, *, carrier_authenticated: bool = False) -> UplinkOutcome:
    """`handle_uplink` for a frame as it comes off the wire: read first, as the worker's edge reads it
    (entrypoints/workers/worker.py: take_uplink); one that cannot be read is refused and recorded."""
    try:
        frame = cjt188.read_uplink(payload)
    except MalformedFrame as error:
        return refuse_unreadable_frame(topic_serial, error.code, error.message, payload, uow)
    return handle_uplink(topic_serial, frame, uow, carrier_authenticated=carrier_authenticated)
