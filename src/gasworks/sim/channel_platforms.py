"""The simulated city's online channels as the platforms gasworks calls out to: WeChat Pay's API v3,
Alipay's open API and the wallet's query API, each a local stub over real HTTP (sim/stubs/), signing
and verifying as the real one does, on the simulation's clock.

Every payment the simulated world collects is recorded at its platform as it happens, so when the
worker asks about an order (`entrypoints/workers/channel_jobs.py`) the platform answers what is
true there; each day's statement, as the world writes it (its statement faults included), is what
the platform serves for that day, fetched through gasworks' own gateways.
"""

from collections import defaultdict
from datetime import date
from urllib.parse import parse_qs, unquote

from gasworks.adapters.channels.base import BEIJING
from gasworks.adapters.channels.rsa import new_private_key_pem, public_key_pem
from gasworks.bootstrap import System
from gasworks.domain.channels import KeyPurpose
from gasworks.domain.clock import Clock
from gasworks.services import channels
from gasworks.services.outbound import configure_gateway
from gasworks.sim.statements import alipay_business_bill, plain_statement, wechat_trade_bill
from gasworks.sim.stubs.alipay_gateway import AlipayGatewayStub
from gasworks.sim.stubs.serving import ServedApp
from gasworks.sim.stubs.wallet import WalletStub
from gasworks.sim.stubs.wechatpay import WechatPayStub
from gasworks.sim.world import ALIPAY_APP_ID, WECHAT_MCHID, Collected  # world.py builds this lazily: no cycle

WECHAT_MERCHANT_SERIAL = "5157F09EFDC096DE15EBE81A47057A7232F1B8E1"
ALIPAY_APP_KEY_ID = "alipay-app-sim"
PLATFORM_CHANNELS = ("wechat", "alipay", "wo-wallet")
ORDER_QUERY_PATH = "/v3/pay/transactions/out-trade-no/"


class ChannelPlatforms:
    def __init__(self, system: System, clock: Clock, *, wechat_platform_key_pem: str, wechat_platform_serial: str, alipay_key_pem: str, wallet_key_id: str, wallet_secret: str) -> None:
        merchant_key, app_key = new_private_key_pem(), new_private_key_pem()
        self.wechat = WechatPayStub(
            mchid=WECHAT_MCHID, merchant_serial=WECHAT_MERCHANT_SERIAL, merchant_public_key_pem=public_key_pem(merchant_key), now=clock.now,
            platform_private_key_pem=wechat_platform_key_pem, platform_serial=wechat_platform_serial,
        )  # fmt: skip
        self.alipay = AlipayGatewayStub(app_id=ALIPAY_APP_ID, app_public_key_pem=public_key_pem(app_key), alipay_private_key_pem=alipay_key_pem, now=clock.now)
        self.wallet = WalletStub(key_id=wallet_key_id, secret=wallet_secret, now=clock.now)
        self._served = [ServedApp(self.wechat.app()).start(), ServedApp(self.wallet.app()).start()]
        self._refunds_processing: set[str] = set()
        self.alipay.start()
        new_uow, actor = system.new_uow, "simulator"
        channels.add_key(channel_id="wechat", purpose=KeyPurpose.SIGNING_KEY, key_id=WECHAT_MERCHANT_SERIAL, material=merchant_key, uow=new_uow(), actor=actor)
        channels.add_key(channel_id="alipay", purpose=KeyPurpose.SIGNING_KEY, key_id=ALIPAY_APP_KEY_ID, material=app_key, uow=new_uow(), actor=actor)
        configure_gateway("wechat", self._served[0].base_url, uow=new_uow(), actor=actor)
        configure_gateway("alipay", self.alipay.gateway_url, uow=new_uow(), actor=actor)
        configure_gateway("wo-wallet", self._served[1].base_url + self.wallet.prefix, uow=new_uow(), actor=actor)

    def close(self) -> None:
        for served in self._served:
            served.stop()
        self.alipay.stop()

    def collected(self, c: Collected) -> None:
        """A payment the channel took, as its platform records it."""
        if c.channel_id == "wechat" and c.out_trade_no:
            self.wechat.pay(c.out_trade_no, c.amount_fen, transaction_id=c.channel_txn_id)
        elif c.channel_id == "alipay" and c.out_trade_no:
            self.alipay.create_trade(c.out_trade_no, c.amount_fen, trade_no=c.channel_txn_id)
            self.alipay.pay(c.out_trade_no, at=c.paid_at)
        elif c.channel_id == "wo-wallet":
            self.wallet.transactions[c.channel_txn_id] = {
                "txn_id": c.channel_txn_id, "status": "paid", "account_no": c.account_no, "amount_fen": c.amount_fen, "paid_at": c.paid_at.isoformat(),
            }  # fmt: skip

    def settle_refunds(self) -> set[str]:
        """Refunds the platform took an hour or more ago (at the previous look) are paid back now:
        the transactions paid back."""
        settled = set()
        for refund in self.wechat.refunds.values():
            if refund.status == "PROCESSING" and refund.out_refund_no in self._refunds_processing:
                self.wechat.settle_refund(refund.out_refund_no, "SUCCESS")
                settled.add(refund.transaction_id)
        self._refunds_processing = {r.out_refund_no for r in self.wechat.refunds.values() if r.status == "PROCESSING"}
        return settled

    def orders_asked(self) -> set[tuple[str, str]]:
        """(channel, out_trade_no) of every order gasworks has asked its platform about."""
        asked = {("wechat", unquote(call.split(ORDER_QUERY_PATH, 1)[1].split("?", 1)[0])) for call in self.wechat.calls if ORDER_QUERY_PATH in call}
        asked |= {("alipay", str(content.get("out_trade_no"))) for method, content in self.alipay.requests if method == "alipay.trade.query"}
        return asked

    def publish_statements(self, collected: list[Collected], days: list[date]) -> list[tuple[str, date]]:
        """Each platform's bill for each of `days`, as the world writes it from what it collected (a day
        with none is an empty bill); the (channel, day)s published."""
        by_day: dict[tuple[str, date], list[Collected]] = defaultdict(list)
        refunds_by_day: dict[date, list[Collected]] = defaultdict(list)
        wanted = set(days)
        for c in collected:
            day = c.paid_at.astimezone(BEIJING).date()
            if c.channel_id in PLATFORM_CHANNELS and day in wanted:
                by_day[(c.channel_id, day)].append(c)
            if c.refunded_at is not None and c.refunded_at.astimezone(BEIJING).date() in wanted:
                refunds_by_day[c.refunded_at.astimezone(BEIJING).date()].append(c)
        published = []
        for channel_id in PLATFORM_CHANNELS:
            for day in days:
                payments = sorted(by_day.get((channel_id, day), []), key=lambda c: c.paid_at)
                if channel_id == "wechat":
                    self.wechat.bills[day.isoformat()] = wechat_trade_bill(day, payments, refunds=refunds_by_day.get(day, []))
                elif channel_id == "alipay":
                    self.alipay.bill_details[day] = alipay_business_bill(day, payments)
                else:
                    self.wallet.statements[day.isoformat()] = plain_statement(day, payments)
                published.append((channel_id, day))
        return published

    def statements_served(self) -> set[tuple[str, date]]:
        """(channel, day) of every statement a platform has handed to gasworks."""
        served = {("wechat", date.fromisoformat(parse_qs(call.split("?", 1)[1])["bill_date"][0])) for call in self.wechat.calls if call.startswith("GET /v3/bill/tradebill?")}
        served |= {("alipay", date.fromisoformat(str(content["bill_date"]))) for method, content in self.alipay.requests if method == "alipay.data.dataservice.bill.downloadurl.query"}
        served |= {("wo-wallet", date.fromisoformat(day)) for day in self.wallet.statements_served}
        return served
