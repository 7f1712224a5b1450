"""The channels' daily statement files, each in its own format, written from what they collected.

A statement is the channel's truth: it lists every payment it collected that day, also the ones
whose notification was lost, and once each, also when the notification was sent twice. These are
the files three-way reconciliation reads.

- WeChat Pay trade bill (交易账单, bill_type=ALL): UTF-8 CSV, 27 columns, every cell prefixed with a
  backtick (`), then a summary header and one summary row, also backticked. Fee 0.6 % per trade.
- Alipay merchant business bill (业务明细): GBK CSV with `#` preamble and closing lines, a header,
  one row per trade, and `#交易合计` / `#退款合计` summary lines. Fee 0.6 % per trade.
- A plain CSV for bill-payment wallets and for kiosk and counter day-end reports:
  `txn_id,account_no,amount_fen,paid_at,status`, then `# total,<count>,<fen>`.
"""

import csv
import io
from collections import defaultdict
from datetime import date, datetime
from pathlib import Path

from gasworks.adapters.channels.base import BEIJING
from gasworks.domain.money import fen_to_yuan_text
from gasworks.sim.world import ALIPAY_APP_ID, WECHAT_MCHID, Collected

FEE_PER_MILLE = 6  # 0.6 %, a common rate for utilities


def fee_fen(amount_fen: int) -> int:
    """0.6 % rounded half up to the fen."""
    return (amount_fen * FEE_PER_MILLE + 500) // 1000


WECHAT_COLUMNS = (
    "交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识", "交易类型",
    "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号", "商户退款单号", "退款金额",
    "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包", "手续费", "费率", "订单金额", "申请退款金额", "费率备注",
)  # fmt: skip
WECHAT_SUMMARY_COLUMNS = ("总交易单数", "应结订单总金额", "退款总金额", "充值券退款总金额", "手续费总金额", "订单总金额", "申请退款总金额")

ALIPAY_COLUMNS = (
    "支付宝交易号", "商户订单号", "业务类型", "商品名称", "创建时间", "完成时间", "门店编号", "门店名称", "操作员", "终端号",
    "对方账户", "订单金额（元）", "商家实收（元）", "支付宝红包（元）", "集分宝（元）", "支付宝优惠（元）", "商家优惠（元）",
    "券核销金额（元）", "券名称", "商家红包消费金额（元）", "卡消费金额（元）", "退款批次号/请求号", "服务费（元）", "分润（元）", "备注",
)  # fmt: skip


def _local(c: Collected) -> str:
    return _local_time(c.paid_at)


def _local_time(at: datetime) -> str:
    return at.astimezone(BEIJING).strftime("%Y-%m-%d %H:%M:%S")


def _fee(c: Collected) -> int:
    return fee_fen(c.listed_amount_fen) if c.statement_fee_fen is None else c.statement_fee_fen


def _listed(payments: list[Collected]) -> list[Collected]:
    """The lines as the channel lists them: left-out ones missing, doubled ones twice."""
    return [c for c in payments if not c.left_out for _ in range(2 if c.listed_twice else 1)]


def wechat_trade_bill(day: date, payments: list[Collected], *, refunds: list[Collected] | None = None) -> bytes:
    """`refunds`: payments of earlier days the channel paid back on this day, on gasworks' request."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(WECHAT_COLUMNS)
    rows, paid_fen, fees_fen, refunded_fen = 0, 0, 0, 0
    lines = [(c, _local(c), [("SUCCESS", "0.00"), ("REFUND", fen_to_yuan_text(c.listed_amount_fen))] if c.refunded else [("SUCCESS", "0.00")]) for c in _listed(payments)]
    lines += [(c, _local_time(c.refunded_at), [("REFUND", fen_to_yuan_text(c.amount_fen))]) for c in refunds or [] if c.refunded_at is not None]
    for c, when, states in lines:
        yuan, fee = fen_to_yuan_text(c.listed_amount_fen), fen_to_yuan_text(_fee(c))
        for state, refund in states:
            row = (
                when, "wxgasworks0000001", WECHAT_MCHID, "0", "", c.channel_txn_id, c.out_trade_no or "", "oGasworksResident",
                "JSAPI", state, "OTHERS", "CNY", yuan, "0.00", "0", "0", refund, "0.00", "", "", "燃气费充值", c.account_no,
                fee, "0.60%", yuan, "0.00", "",
            )  # fmt: skip
            writer.writerow(["`" + cell for cell in row])
            rows += 1
            fees_fen += _fee(c)
            if state == "SUCCESS":
                paid_fen += c.listed_amount_fen
            else:
                refunded_fen += c.listed_amount_fen
    writer.writerow(WECHAT_SUMMARY_COLUMNS)
    summary = (str(rows), fen_to_yuan_text(paid_fen), fen_to_yuan_text(refunded_fen), "0.00", fen_to_yuan_text(fees_fen), fen_to_yuan_text(paid_fen), "0.00")
    writer.writerow(["`" + cell for cell in summary])
    return out.getvalue().encode("utf-8")


def alipay_business_bill(day: date, payments: list[Collected]) -> bytes:
    out = io.StringIO()
    out.write("#支付宝业务明细查询\r\n")
    out.write(f"#账号：[{ALIPAY_APP_ID}]\r\n")
    out.write(f"#起始日期：[{day:%Y年%m月%d日} 00:00:00]   终止日期：[{day:%Y年%m月%d日} 23:59:59]\r\n")
    out.write("#-----------------------------------------业务明细列表----------------------------------------\r\n")
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(ALIPAY_COLUMNS)
    listed = _listed(payments)
    for c in listed:
        yuan = fen_to_yuan_text(c.listed_amount_fen)
        kinds = [("交易", yuan), ("退款", "-" + yuan)] if c.refunded else [("交易", yuan)]
        for kind, received in kinds:
            row = (
                c.channel_txn_id, c.out_trade_no or "", kind, "燃气费充值", _local(c), _local(c), "", "", "", "", "resident@alipay",
                yuan, received, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", "", "-" + fen_to_yuan_text(_fee(c)), "0.00", c.account_no,
            )  # fmt: skip
            writer.writerow([cell + "\t" if i in (0, 1) else cell for i, cell in enumerate(row)])  # Alipay tabs its ids against spreadsheets
    total = sum(c.listed_amount_fen for c in listed)
    refunds = [c for c in listed if c.refunded]
    out.write("#-----------------------------------------业务明细列表结束------------------------------------\r\n")
    out.write(f"#交易合计：{len(listed)}笔，商家实收共{fen_to_yuan_text(total)}元，商家优惠共0.00元\r\n")
    out.write(f"#退款合计：{len(refunds)}笔，商家实收退款共-{fen_to_yuan_text(sum(c.listed_amount_fen for c in refunds))}元，商家优惠退款共0.00元\r\n")
    out.write(f"#导出时间：[{day:%Y年%m月%d日} 23:59:59]\r\n")
    return out.getvalue().encode("gbk")


def plain_statement(day: date, payments: list[Collected]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("txn_id", "account_no", "amount_fen", "paid_at", "status"))
    listed = _listed(payments)
    for c in listed:
        writer.writerow((c.channel_txn_id, c.account_no, c.listed_amount_fen, c.paid_at.isoformat(), "SUCCESS"))
        if c.refunded:
            writer.writerow((c.channel_txn_id, c.account_no, c.listed_amount_fen, c.paid_at.isoformat(), "REFUND"))
    lines = len(listed) + sum(1 for c in listed if c.refunded)
    writer.writerow(("# total", lines, sum(c.listed_amount_fen for c in listed), "", ""))
    return out.getvalue().encode("utf-8")


WRITERS = {"wechat": (wechat_trade_bill, "csv"), "alipay": (alipay_business_bill, "csv")}


def write_statements(collected: list[Collected], directory: Path) -> list[Path]:
    """One file per channel and local day, named `<channel>-<YYYY-MM-DD>.csv`. Returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    by_file: dict[tuple[str, date], list[Collected]] = defaultdict(list)
    refunds: dict[date, list[Collected]] = defaultdict(list)
    for c in collected:
        by_file[(c.channel_id, c.paid_at.astimezone(BEIJING).date())].append(c)
        if c.refunded_at is not None:
            refunds[c.refunded_at.astimezone(BEIJING).date()].append(c)
    written = []
    for (channel_id, day), payments in sorted(by_file.items()):
        writer, extension = WRITERS.get(channel_id, (plain_statement, "csv"))
        path = directory / f"{channel_id}-{day.isoformat()}.{extension}"
        in_order = sorted(payments, key=lambda c: c.paid_at)
        path.write_bytes(wechat_trade_bill(day, in_order, refunds=refunds.get(day, [])) if channel_id == "wechat" else writer(day, in_order))
        written.append(path)
    return written
