"""Outbound adapters of the `ChannelGateway` port (services/channel_gateway.py), one per channel kind.

`gateway_for` builds one from a channel's configuration: its base URL (`gasworks channels gateway`,
table `channel_gateways`) and its keys (`gasworks channels add-key`): for WeChat Pay our merchant
private key (purpose `sign`, key id = our merchant certificate serial) and the platform public keys
we already verify notifications with (purpose `verify`, key id = the platform key serial); for
Alipay the app_id (merchant id), Alipay's public key (`verify`) and our application's private key
(purpose `sign`, or the file `GASWORKS_ALIPAY_APP_PRIVATE_KEY_FILE` names).
"""

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from gasworks.adapters.channels.gateways.alipay import AlipayGateway, AlipayGatewayConfig, load_app_private_key
from gasworks.adapters.channels.gateways.wallet import WalletGateway
from gasworks.adapters.channels.gateways.wechatpay_v3 import WechatPayV3Gateway
from gasworks.domain.channels import Channel, ChannelKind, KeyPurpose
from gasworks.services.channel_gateway import ChannelGateway


class GatewayNotConfigured(Exception):
    """The channel has a base URL but lacks what its gateway needs (a key); the message says what."""


def gateway_for(channel: Channel, base_url: str, *, now: Callable[[], datetime], skew_s: int = 300, timeout_s: float = 10.0, notify_url: str | None = None,
                alipay_app_private_key_file: str = "") -> ChannelGateway:  # fmt: skip
    if channel.kind == ChannelKind.WECHATPAY_V3:
        signing = channel.active_keys(KeyPurpose.SIGNING_KEY)
        if not signing:
            raise GatewayNotConfigured(f"{channel.id} has no merchant private key: gasworks channels add-key {channel.id} --purpose sign --key-id <merchant certificate serial> --file apiclient_key.pem")
        platform = {k.key_id: k.material for k in channel.active_keys(KeyPurpose.VERIFY_PUBLIC_KEY)}
        return WechatPayV3Gateway(
            channel_id=channel.id, base_url=base_url, mchid=channel.merchant_id, merchant_serial=signing[-1].key_id,
            merchant_private_key_pem=signing[-1].material, platform_keys=platform, now=now, skew_s=skew_s, timeout_s=timeout_s, notify_url=notify_url,
        )  # fmt: skip
    if channel.kind == ChannelKind.ALIPAY:
        signing = channel.active_keys(KeyPurpose.SIGNING_KEY)
        if signing:
            private_key_pem = signing[-1].material
        elif alipay_app_private_key_file:
            private_key_pem = load_app_private_key(Path(alipay_app_private_key_file))
        else:
            raise GatewayNotConfigured(f"{channel.id} has no application private key: GASWORKS_ALIPAY_APP_PRIVATE_KEY_FILE, or gasworks channels add-key {channel.id} --purpose sign --key-id <app key id> --file app_private_key.pem")
        return AlipayGateway(channel, AlipayGatewayConfig(app_private_key_pem=private_key_pem, gateway_url=base_url, timeout_s=timeout_s), now=now)
    if channel.kind == ChannelKind.WALLET_HMAC:
        secrets_ = channel.active_keys(KeyPurpose.HMAC_SECRET)
        return WalletGateway(channel_id=channel.id, base_url=base_url, keys={k.key_id: k.material for k in secrets_}, now=now, skew_s=skew_s, timeout_s=timeout_s)
    raise GatewayNotConfigured(f"no gateway adapter for {channel.kind.value} channels")
