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
from datetime import date
from pathlib import Path

from gasworks.domain.money import fen_to_yuan_text
from gasworks.sim.world import ALIPAY_APP_ID, LOCAL, WECHAT_MCHID, Collected

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
    return c.paid_at.astimezone(LOCAL).strftime("%Y-%m-%d %H:%M:%S")


def wechat_trade_bill(day: date, payments: list[Collected]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(WECHAT_COLUMNS)
    for c in payments:
        yuan, fee = fen_to_yuan_text(c.amount_fen), fen_to_yuan_text(fee_fen(c.amount_fen))
        row = (
            _local(c), "wxgasworks0000001", WECHAT_MCHID, "0", "", c.channel_txn_id, c.out_trade_no or "", "oGasworksResident",
            "JSAPI", "SUCCESS", "OTHERS", "CNY", yuan, "0.00", "0", "0", "0.00", "0.00", "", "", "燃气费充值", c.account_no,
            fee, "0.60%", yuan, "0.00", "",
        )  # fmt: skip
        writer.writerow(["`" + cell for cell in row])
    total = sum(c.amount_fen for c in payments)
    writer.writerow(WECHAT_SUMMARY_COLUMNS)
    summary = (str(len(payments)), fen_to_yuan_text(total), "0.00", "0.00", fen_to_yuan_text(sum(fee_fen(c.amount_fen) for c in payments)), fen_to_yuan_text(total), "0.00")
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
    for c in payments:
        yuan = fen_to_yuan_text(c.amount_fen)
        row = (
            c.channel_txn_id, c.out_trade_no or "", "交易", "燃气费充值", _local(c), _local(c), "", "", "", "", "resident@alipay",
            yuan, yuan, "0.00", "0.00", "0.00", "0.00", "0.00", "", "0.00", "0.00", "", "-" + fen_to_yuan_text(fee_fen(c.amount_fen)), "0.00", c.account_no,
        )  # fmt: skip
        writer.writerow([cell + "\t" if i in (0, 1) else cell for i, cell in enumerate(row)])  # Alipay tabs its ids against spreadsheets
    total = sum(c.amount_fen for c in payments)
    out.write("#-----------------------------------------业务明细列表结束------------------------------------\r\n")
    out.write(f"#交易合计：{len(payments)}笔，商家实收共{fen_to_yuan_text(total)}元，商家优惠共0.00元\r\n")
    out.write("#退款合计：0笔，商家实收退款共0.00元，商家优惠退款共0.00元\r\n")
    out.write(f"#导出时间：[{day:%Y年%m月%d日} 23:59:59]\r\n")
    return out.getvalue().encode("gbk")


def plain_statement(day: date, payments: list[Collected]) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(("txn_id", "account_no", "amount_fen", "paid_at", "status"))
    for c in payments:
        writer.writerow((c.channel_txn_id, c.account_no, c.amount_fen, c.paid_at.isoformat(), "SUCCESS"))
    writer.writerow(("# total", len(payments), sum(c.amount_fen for c in payments), "", ""))
    return out.getvalue().encode("utf-8")


WRITERS = {"wechat": (wechat_trade_bill, "csv"), "alipay": (alipay_business_bill, "csv")}


def write_statements(collected: list[Collected], directory: Path) -> list[Path]:
    """One file per channel and local day, named `<channel>-<YYYY-MM-DD>.csv`. Returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    by_file: dict[tuple[str, date], list[Collected]] = defaultdict(list)
    for c in collected:
        by_file[(c.channel_id, c.paid_at.astimezone(LOCAL).date())].append(c)
    written = []
    for (channel_id, day), payments in sorted(by_file.items()):
        writer, extension = WRITERS.get(channel_id, (plain_statement, "csv"))
        path = directory / f"{channel_id}-{day.isoformat()}.{extension}"
        path.write_bytes(writer(day, sorted(payments, key=lambda c: c.paid_at)))
        written.append(path)
    return written
