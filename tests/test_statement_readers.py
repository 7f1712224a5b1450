"""The statement readers (DuckDB over the file): every line read to the fen, and a bad file refused naming its line."""

from datetime import UTC, date, datetime

import pytest

from gasworks.adapters.statements import read_statement
from gasworks.domain.statements import LineStatus, StatementRefused
from gasworks.sim.statements import alipay_business_bill, plain_statement, wechat_trade_bill
from gasworks.sim.world import LOCAL, Collected

DAY = date(2026, 11, 20)


def collected(n: int, channel_id: str = "wo-wallet") -> list[Collected]:
    return [Collected(channel_id, f"T{i:06d}", f"43{i:08d}", 1_001 + i, datetime(2026, 11, 20, 9, i % 60, tzinfo=LOCAL), out_trade_no=None) for i in range(n)]


def lines_of(format_: str, raw: bytes) -> list:
    with read_statement(format_, raw) as statement:
        return [line for batch in statement.batches(7) for line in batch]


def refusal(format_: str, raw: bytes) -> StatementRefused:
    with pytest.raises(StatementRefused) as refused:
        read_statement(format_, raw).close()
    return refused.value


def test_wechat_bill_is_read_to_the_fen_with_backticks_refunds_and_beijing_time():
    payments = collected(3, "wechat")
    payments[1].refunded = True
    lines = lines_of("wechat-trade-bill", wechat_trade_bill(DAY, payments))
    assert [(x.line_no, x.channel_txn_id, x.amount_fen, x.status) for x in lines] == [
        (2, "T000000", 1001, LineStatus.PAID), (3, "T000001", 1002, LineStatus.PAID), (4, "T000001", 1002, LineStatus.REFUNDED), (5, "T000002", 1003, LineStatus.PAID),
    ]  # fmt: skip
    assert lines[0].fee_fen == 6 and lines[0].account_no == "4300000000"
    assert lines[0].paid_at == datetime(2026, 11, 20, 1, 0, tzinfo=UTC)  # 09:00 in Beijing


def test_alipay_bill_in_gbk_skips_blank_lines_and_still_names_the_right_line():
    raw = alipay_business_bill(DAY, collected(4, "alipay")).decode("gbk")
    rows = raw.split("\r\n")
    header_at = next(i for i, row in enumerate(rows) if row.startswith("支付宝交易号"))
    rows.insert(header_at + 2, "")  # a blank line after the first trade
    assert [x.line_no for x in lines_of("alipay-business-bill", "\r\n".join(rows).encode("gbk"))] == [header_at + 2, header_at + 4, header_at + 5, header_at + 6]
    rows[header_at + 4] = rows[header_at + 4].replace("交易", "转账", 1)
    bad = refusal("alipay-business-bill", "\r\n".join(rows).encode("gbk"))
    assert bad.line_no == header_at + 5 and "业务类型 '转账' is neither 交易 nor 退款" in bad.message


def test_alipay_bill_not_in_gbk_is_refused_at_its_byte():
    bad = refusal("alipay-business-bill", alipay_business_bill(DAY, collected(2, "alipay")) + b"\xff\xff")
    assert bad.code == "STATEMENT_ENCODING" and "not GBK text" in bad.message


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("T9,4300000009,12x,2026-11-20T01:00:00+00:00,SUCCESS", "amount_fen '12x' is not a positive whole number of fen"),
        ("T9,4300000009,0,2026-11-20T01:00:00+00:00,SUCCESS", "amount_fen '0' is not a positive whole number of fen"),
        ("T9,4300000009,100,2026-11-20T01:00:00+00:00,PAID", "status 'PAID' is neither SUCCESS nor REFUND"),
        ("T9,4300000009,100,2026-11-20 01:00:00,SUCCESS", "paid_at '2026-11-20 01:00:00' has no UTC offset"),
        ("T9,4300000009,100,yesterday,SUCCESS", "paid_at 'yesterday' is not an ISO 8601 time"),
        ("T9,4300000009,100,2026-11-20T01:00:00+00:00,SUCCESS,extra", "6 cells, expected 5"),
        ("T9,4300000009,100", "3 cells, expected 5"),
        ("", "0 cells, expected 5"),
        ("T" * 65 + ",4300000009,100,2026-11-20T01:00:00+00:00,SUCCESS", "transaction id must be 1 to 64 characters, got 65"),
        ("T9,4300000009,99999999999999,2026-11-20T01:00:00+00:00,SUCCESS", "amount 99999999999999 fen is beyond any real payment"),
    ],
)
def test_a_bad_plain_line_refuses_the_file_naming_that_line(line, reason):
    rows = plain_statement(DAY, collected(5)).decode().splitlines()
    rows.insert(4, line)  # line 5 of the file
    total = rows[-1].split(",")
    amount = int(line.split(",")[2]) if line.count(",") >= 2 and line.split(",")[2].isdigit() else 0
    rows[-1] = ",".join([total[0], str(int(total[1]) + 1), str(int(total[2]) + amount), *total[3:]])
    bad = refusal("plain-csv", ("\n".join(rows) + "\n").encode())
    assert (bad.line_no, bad.code) == (5, "STATEMENT_REFUSED") and reason in bad.message


def test_a_plain_file_whose_total_disagrees_or_is_missing_is_refused():
    raw = plain_statement(DAY, collected(3))
    assert refusal("plain-csv", raw.replace(b"# total,3,", b"# total,4,")).code == "STATEMENT_TOTALS"
    assert refusal("plain-csv", raw[: raw.rindex(b"# total")]).code == "STATEMENT_TRUNCATED"
    assert refusal("plain-csv", b"").code == "STATEMENT_COLUMNS"
    assert [x.amount_fen for x in lines_of("plain-csv", raw)] == [1001, 1002, 1003]
