"""Statement readers: WeChat Pay trade bill, Alipay business bill, plain CSV (wallets, banks, devices).

Every reader takes the file's bytes and returns the whole statement, or raises StatementRefused
naming the line and the reason: wrong encoding, missing columns, a malformed amount, a truncated
file (no summary), or a summary whose totals do not add up. Nothing is ever half read.
"""

import csv
import io
import re
from collections.abc import Callable
from datetime import UTC, datetime

from gasworks.adapters.channels.base import BEIJING
from gasworks.domain.errors import InvalidInput
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, yuan_text_to_fen
from gasworks.domain.statements import LineStatus, Statement, StatementLine, StatementRefused

LINES_MAX = 5_000_000
FILE_BYTES_MAX = 2 * 1024 * 1024 * 1024


def _yuan(text: str, line_no: int, column: str) -> int:
    value = text.strip()
    negative = value.startswith("-")
    try:
        fen = yuan_text_to_fen(value.lstrip("-") if negative else value)
    except InvalidInput:
        raise StatementRefused(f"{column} {text!r} is not an amount in yuan", line_no=line_no) from None
    return -fen if negative else fen


def _local_time(text: str, line_no: int, column: str) -> datetime:
    try:
        return datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING).astimezone(UTC)
    except ValueError:
        raise StatementRefused(f"{column} {text!r} is not a time like 2026-11-01 09:30:00", line_no=line_no) from None


def _decode(raw: bytes, encoding: str) -> str:
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as error:
        raise StatementRefused(f"not {encoding.upper()} text (byte {error.start})", code="STATEMENT_ENCODING") from None
    return text.removeprefix("\ufeff")


def _columns(header: list[str], required: tuple[str, ...], line_no: int) -> dict[str, int]:
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [name for name in required if name not in index]
    if missing:
        raise StatementRefused(f"missing columns: {', '.join(missing)}", line_no=line_no, code="STATEMENT_COLUMNS")
    return index


# ---- WeChat Pay trade bill ---------------------------------------------------------------------

WECHAT_REQUIRED = ("交易时间", "微信订单号", "商户订单号", "交易状态", "应结订单金额", "退款金额", "手续费", "商户数据包")
WECHAT_SUMMARY = ("总交易单数", "应结订单总金额", "退款总金额", "手续费总金额")


def read_wechat_trade_bill(raw: bytes) -> Statement:
    rows = list(csv.reader(io.StringIO(_decode(raw, "utf-8"))))
    if not rows:
        raise StatementRefused("empty file", code="STATEMENT_TRUNCATED")
    columns = _columns(rows[0], WECHAT_REQUIRED, 1)
    lines: list[StatementLine] = []
    summary_at = next((i for i, row in enumerate(rows) if row and row[0].strip() == "总交易单数"), None)
    if summary_at is None or summary_at + 1 >= len(rows):
        raise StatementRefused("no summary rows at the end: the file is truncated", code="STATEMENT_TRUNCATED")
    for i, row in enumerate(rows[1:summary_at], start=2):
        if len(row) != len(rows[0]):
            raise StatementRefused(f"{len(row)} cells, the header has {len(rows[0])}", line_no=i)
        cell = {name: row[j].removeprefix("`").strip() for name, j in columns.items()}
        state = cell["交易状态"]
        if state not in ("SUCCESS", "REFUND"):
            raise StatementRefused(f"交易状态 {state!r} is neither SUCCESS nor REFUND", line_no=i)
        refunded = state == "REFUND"
        lines.append(
            StatementLine(
                line_no=i,
                channel_txn_id=cell["微信订单号"],
                out_trade_no=cell["商户订单号"] or None,
                account_no=cell["商户数据包"] or None,
                amount_fen=_yuan(cell["退款金额"] if refunded else cell["应结订单金额"], i, "退款金额" if refunded else "应结订单金额"),
                fee_fen=_yuan(cell["手续费"], i, "手续费"),
                status=LineStatus.REFUNDED if refunded else LineStatus.PAID,
                paid_at=_local_time(cell["交易时间"], i, "交易时间"),
            )
        )
    summary_columns = _columns(rows[summary_at], WECHAT_SUMMARY, summary_at + 1)
    summary = {name: rows[summary_at + 1][j].removeprefix("`").strip() for name, j in summary_columns.items()}
    n = summary_at + 2
    if not summary["总交易单数"].isdigit() or int(summary["总交易单数"]) != len(lines):
        raise StatementRefused(f"summary says {summary['总交易单数']} trades, the file lists {len(lines)}", line_no=n, code="STATEMENT_TOTALS")
    statement = Statement("wechat-trade-bill", tuple(lines))
    if _yuan(summary["应结订单总金额"], n, "应结订单总金额") != statement.paid_total_fen:
        raise StatementRefused(f"summary total {summary['应结订单总金额']} differs from the rows' {statement.paid_total_fen} fen", line_no=n, code="STATEMENT_TOTALS")
    if _yuan(summary["手续费总金额"], n, "手续费总金额") != statement.fee_total_fen:
        raise StatementRefused(f"summary fees {summary['手续费总金额']} differ from the rows' {statement.fee_total_fen} fen", line_no=n, code="STATEMENT_TOTALS")
    return statement


# ---- Alipay business bill ----------------------------------------------------------------------

ALIPAY_REQUIRED = ("支付宝交易号", "商户订单号", "业务类型", "完成时间", "订单金额（元）", "商家实收（元）", "服务费（元）", "备注")
ALIPAY_TOTAL = re.compile(r"^#交易合计：(\d+)笔，商家实收共(-?[0-9.]+)元")


def read_alipay_business_bill(raw: bytes) -> Statement:
    text = _decode(raw, "gbk")
    physical = text.splitlines()
    header_at = next((i for i, line in enumerate(physical) if line and not line.startswith("#")), None)
    if header_at is None:
        raise StatementRefused("no header row", code="STATEMENT_TRUNCATED")
    header = next(csv.reader([physical[header_at]]))
    columns = _columns(header, ALIPAY_REQUIRED, header_at + 1)
    lines: list[StatementLine] = []
    end_at = None
    for i in range(header_at + 1, len(physical)):
        line = physical[i]
        if line.startswith("#"):
            end_at = i
            break
        if not line.strip():
            continue
        row = next(csv.reader([line]))
        if len(row) != len(header):
            raise StatementRefused(f"{len(row)} cells, the header has {len(header)}", line_no=i + 1)
        cell = {name: row[j].strip().strip("\t") for name, j in columns.items()}
        kind = cell["业务类型"]
        if kind not in ("交易", "退款"):
            raise StatementRefused(f"业务类型 {kind!r} is neither 交易 nor 退款", line_no=i + 1)
        received = _yuan(cell["商家实收（元）"], i + 1, "商家实收（元）")
        lines.append(
            StatementLine(
                line_no=i + 1,
                channel_txn_id=cell["支付宝交易号"],
                out_trade_no=cell["商户订单号"] or None,
                account_no=cell["备注"] or None,
                amount_fen=abs(received),
                fee_fen=abs(_yuan(cell["服务费（元）"], i + 1, "服务费（元）")),
                status=LineStatus.REFUNDED if kind == "退款" else LineStatus.PAID,
                paid_at=_local_time(cell["完成时间"], i + 1, "完成时间"),
            )
        )
    trailer = physical[end_at:] if end_at is not None else []
    totals = [m for m in (ALIPAY_TOTAL.match(line) for line in trailer) if m]
    if not totals:
        raise StatementRefused("no #交易合计 line at the end: the file is truncated", code="STATEMENT_TRUNCATED")
    count, total = int(totals[0].group(1)), _yuan(totals[0].group(2), len(physical), "交易合计")
    paid = [line for line in lines if line.status == LineStatus.PAID]
    if count != len(paid) or total != sum(line.amount_fen for line in paid):
        raise StatementRefused(
            f"#交易合计 says {count} trades, ¥{totals[0].group(2)}; the rows hold {len(paid)}, {sum(x.amount_fen for x in paid)} fen",
            code="STATEMENT_TOTALS",
        )
    return Statement("alipay-business-bill", tuple(lines))


# ---- plain CSV: wallets, banks, kiosks, counters -----------------------------------------------

PLAIN_HEADER = ("txn_id", "account_no", "amount_fen", "paid_at", "status")


def read_plain_csv(raw: bytes) -> Statement:
    rows = list(csv.reader(io.StringIO(_decode(raw, "utf-8"))))
    if not rows or tuple(c.strip() for c in rows[0]) != PLAIN_HEADER:
        raise StatementRefused(f"the header must be {','.join(PLAIN_HEADER)}", line_no=1, code="STATEMENT_COLUMNS")
    if len(rows) < 2 or rows[-1][0].strip() != "# total":
        raise StatementRefused("no '# total' line at the end: the file is truncated", code="STATEMENT_TRUNCATED")
    lines = []
    for i, row in enumerate(rows[1:-1], start=2):
        if len(row) != len(PLAIN_HEADER):
            raise StatementRefused(f"{len(row)} cells, expected {len(PLAIN_HEADER)}", line_no=i)
        txn_id, account_no, amount, paid_at, status = (c.strip() for c in row)
        if not amount.isdigit() or int(amount) <= 0:
            raise StatementRefused(f"amount_fen {amount!r} is not a positive whole number of fen", line_no=i)
        if status not in ("SUCCESS", "REFUND"):
            raise StatementRefused(f"status {status!r} is neither SUCCESS nor REFUND", line_no=i)
        try:
            when = datetime.fromisoformat(paid_at)
        except ValueError:
            raise StatementRefused(f"paid_at {paid_at!r} is not an ISO 8601 time", line_no=i) from None
        if when.tzinfo is None:
            raise StatementRefused(f"paid_at {paid_at!r} has no UTC offset", line_no=i)
        lines.append(
            StatementLine(i, txn_id, None, account_no or None, int(amount), 0, LineStatus.REFUNDED if status == "REFUND" else LineStatus.PAID, when.astimezone(UTC))
        )
    total_row = rows[-1]
    statement = Statement("plain-csv", tuple(lines))
    if len(total_row) < 3 or not total_row[1].strip().isdigit() or not total_row[2].strip().lstrip("-").isdigit():
        raise StatementRefused("the '# total' line must be: # total,<count>,<fen>", line_no=len(rows), code="STATEMENT_TOTALS")
    if int(total_row[1]) != len(lines) or int(total_row[2]) != statement.paid_total_fen:
        raise StatementRefused(
            f"'# total' says {total_row[1].strip()} lines, {total_row[2].strip()} fen; the rows hold {len(lines)}, {statement.paid_total_fen} fen",
            line_no=len(rows), code="STATEMENT_TOTALS",
        )  # fmt: skip
    return statement


READERS: dict[str, Callable[[bytes], Statement]] = {
    "wechat-trade-bill": read_wechat_trade_bill,
    "alipay-business-bill": read_alipay_business_bill,
    "plain-csv": read_plain_csv,
}


def read_statement(format_: str, raw: bytes) -> Statement:
    reader = READERS.get(format_)
    if reader is None:
        raise StatementRefused(f"unknown statement format {format_!r}; known: {', '.join(READERS)}", code="STATEMENT_FORMAT")
    if len(raw) > FILE_BYTES_MAX:
        raise StatementRefused(f"file over {FILE_BYTES_MAX} bytes", code="STATEMENT_TOO_LARGE")
    statement = reader(raw)
    if len(statement.lines) > LINES_MAX:
        raise StatementRefused(f"more than {LINES_MAX} lines", code="STATEMENT_TOO_LARGE")
    for line in statement.lines:
        _check_bounds(line)
    return statement


# What a statement line may name, as wide as what gasworks itself keeps (payments' columns).
TXN_ID_CHARS_MAX, ORDER_NO_CHARS_MAX, ACCOUNT_NO_CHARS_MAX = 64, 32, 12


def _check_bounds(line: StatementLine) -> None:
    """A line naming no transaction, or more money than any real payment, refuses the whole file."""
    if not 0 < len(line.channel_txn_id) <= TXN_ID_CHARS_MAX:
        raise StatementRefused(f"transaction id must be 1 to {TXN_ID_CHARS_MAX} characters, got {len(line.channel_txn_id)}", line_no=line.line_no)
    if not 0 < line.amount_fen <= PAYMENT_FEN_ABSOLUTE_MAX:
        raise StatementRefused(f"amount {str(line.amount_fen)[:30]} fen is beyond any real payment (1 to {PAYMENT_FEN_ABSOLUTE_MAX})", line_no=line.line_no)
    if abs(line.fee_fen) > line.amount_fen:
        raise StatementRefused(f"fee {str(line.fee_fen)[:30]} fen is more than the amount", line_no=line.line_no)
    if line.out_trade_no is not None and len(line.out_trade_no) > ORDER_NO_CHARS_MAX:
        raise StatementRefused(f"order number over {ORDER_NO_CHARS_MAX} characters", line_no=line.line_no)
    if line.account_no is not None and len(line.account_no) > ACCOUNT_NO_CHARS_MAX:
        raise StatementRefused(f"account number over {ACCOUNT_NO_CHARS_MAX} characters", line_no=line.line_no)
