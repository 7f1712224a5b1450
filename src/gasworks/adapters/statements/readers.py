"""Statement readers: WeChat Pay trade bill, Alipay business bill, plain CSV (wallets, banks, devices).

DuckDB reads the lines: the file's bytes are decoded in chunks (GBK to UTF-8 for Alipay; UTF-8 only
checked), its preamble and summary are cut off in Python (a few lines), and the body goes to
`read_csv` with every cell typed VARCHAR and the header's column count enforced. The checks are SQL
over the whole table; only the first offending line comes back to Python, where the per-line check
below names it exactly as it always has. Nothing is held as Python objects per line.

Every reader refuses the whole file with StatementRefused, naming the line and the reason: wrong
encoding, missing columns, a malformed amount, a truncated file (no summary), or a summary whose
totals do not add up. Nothing is ever half read.
"""

import codecs
import csv
import io
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from gasworks.adapters.channels.base import BEIJING
from gasworks.domain.errors import InvalidInput
from gasworks.domain.money import PAYMENT_FEN_ABSOLUTE_MAX, yuan_text_to_fen
from gasworks.domain.statements import LineStatus, StatementLine, StatementRefused

LINES_MAX = 5_000_000
FILE_BYTES_MAX = 2 * 1024 * 1024 * 1024
DECODE_CHUNK_BYTES = 4 * 1024 * 1024  # GBK is decoded this much at a time, never the whole file at once
LINE_BYTES_MAX = 64 * 1024  # no real statement line comes near; DuckDB refuses longer ones
DUCKDB_MEMORY_LIMIT = "512MB"  # beyond it DuckDB spills to the work directory: peak memory stays bounded
REJECTS_KEPT_MAX = 100  # the first bad lines DuckDB keeps to report; the file is refused anyway

# What a statement line may name, as wide as what gasworks itself keeps (payments' columns).
TXN_ID_CHARS_MAX, ORDER_NO_CHARS_MAX, ACCOUNT_NO_CHARS_MAX = 64, 32, 12

# The normalized lines every reader leaves in its DuckDB table `lines`, in this order.
LINE_COLUMNS = ("line_no", "channel_txn_id", "out_trade_no", "account_no", "amount_fen", "fee_fen", "status", "paid_at")

_WHITESPACE = " \t\r\n\x0b\x0c"
_YUAN_SQL = "-*(0|[1-9][0-9]{0,11})(\\.[0-9]{1,2})?"  # what yuan_text_to_fen takes, after lstrip('-')


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


def _columns(header: list[str], required: tuple[str, ...], line_no: int) -> dict[str, int]:
    index = {name.strip(): i for i, name in enumerate(header)}
    missing = [name for name in required if name not in index]
    if missing:
        raise StatementRefused(f"missing columns: {', '.join(missing)}", line_no=line_no, code="STATEMENT_COLUMNS")
    return index


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


# The same bounds as SQL over `lines`, to find the first line _check_bounds refuses.
_OUT_OF_BOUNDS_SQL = f"""
    NOT (length(channel_txn_id) BETWEEN 1 AND {TXN_ID_CHARS_MAX})
    OR amount_fen IS NULL OR NOT (amount_fen BETWEEN 1 AND {PAYMENT_FEN_ABSOLUTE_MAX})
    OR fee_fen IS NULL OR abs(fee_fen) > amount_fen
    OR length(out_trade_no) > {ORDER_NO_CHARS_MAX}
    OR length(account_no) > {ACCOUNT_NO_CHARS_MAX}
"""


# ---- decoding and cutting the file into preamble, body and summary -----------------------------


def _utf8(raw: bytes, encoding: str) -> bytes:
    """The file as UTF-8 without a BOM, decoded chunk by chunk; refused at the first byte that is not `encoding`."""
    decoder = codecs.getincrementaldecoder(encoding)()
    if encoding == "utf-8":
        for start in range(0, len(raw), DECODE_CHUNK_BYTES):
            try:
                decoder.decode(raw[start : start + DECODE_CHUNK_BYTES], final=start + DECODE_CHUNK_BYTES >= len(raw))
            except UnicodeDecodeError as error:
                raise StatementRefused(f"not {encoding.upper()} text (byte {start + error.start})", code="STATEMENT_ENCODING") from None
        return raw.removeprefix(codecs.BOM_UTF8)
    out = io.BytesIO()
    for start in range(0, max(len(raw), 1), DECODE_CHUNK_BYTES):
        try:
            text = decoder.decode(raw[start : start + DECODE_CHUNK_BYTES], final=start + DECODE_CHUNK_BYTES >= len(raw))
        except UnicodeDecodeError as error:
            raise StatementRefused(f"not {encoding.upper()} text (byte {start + error.start})", code="STATEMENT_ENCODING") from None
        out.write((text.removeprefix("\ufeff") if start == 0 else text).encode("utf-8"))
    return out.getvalue()


def _line_no_at(text: bytes, offset: int) -> int:
    """The 1-based line number of the byte at `offset`."""
    return text.count(b"\n", 0, offset) + 1


_BLANK_LINE = re.compile(rb"(?m)^[ \t\r\x0b\x0c]*(?:\n|\Z)")


def _first_empty_line(body: bytes) -> int | None:
    """The offset of the first empty line before the body's end, or None (memchr-fast: no regex over the file)."""
    found = [at + 1 for at in (body.find(b"\n\n"), body.find(b"\n\r\n")) if 0 <= at < len(body.rstrip(b"\r\n"))]
    return min(found) if found else None


def _first_blank_line(body: bytes) -> int | None:
    """The offset of the first empty (or all-space) line before the body's end, or None."""
    match = _BLANK_LINE.search(body)
    if match is None or match.start() >= len(body.rstrip(b"\r\n")):
        return None
    return match.start()


@dataclass
class _Body:
    """The part of the file DuckDB reads: a header line and the data lines."""

    header: list[str]
    first_line_no: int  # the file's line number of the header
    data: bytes  # header line and data lines, UTF-8


def _header_cells(line: bytes) -> list[str]:
    return next(csv.reader([line.decode("utf-8").rstrip("\r\n")]), [])


# ---- the table in DuckDB -----------------------------------------------------------------------


class ReadStatement:
    """A statement file read into DuckDB and checked whole. Its lines stay in DuckDB until written out."""

    def __init__(self, format_: str, db: duckdb.DuckDBPyConnection, work: Path) -> None:
        self.format = format_
        self._db = db
        self._work = work
        count, paid, fee = db.execute("SELECT count(*), coalesce(sum(amount_fen) FILTER (WHERE status = 'paid'), 0), coalesce(sum(fee_fen), 0) FROM lines").fetchone()  # type: ignore[misc]
        self.lines, self.paid_total_fen, self.fee_total_fen = int(count), int(paid), int(fee)

    def lines_csv(self, file_id: int) -> Path:
        """The lines as CSV, no header, in the order of statement_lines' columns with file_id first (for COPY)."""
        path = self._work / f"lines-{file_id}.csv"
        self._db.execute(
            f"COPY (SELECT {int(file_id)}::BIGINT, line_no, channel_txn_id, out_trade_no, account_no, amount_fen, fee_fen, status, CAST(paid_at AS VARCHAR) || '+00' FROM lines) TO '" + _sql_path(path) + "' (FORMAT csv, HEADER false)"
        )
        return path

    def batches(self, batch_lines: int) -> Iterator[list[StatementLine]]:
        """The lines in file order, `batch_lines` at a time (the SQLite path, and tests)."""
        cursor = self._db.execute(f"SELECT {', '.join(LINE_COLUMNS)} FROM lines ORDER BY line_no")
        while rows := cursor.fetchmany(batch_lines):
            yield [
                StatementLine(line_no, txn, order_no, account_no, int(amount), int(fee), LineStatus(status), None if paid_at is None else paid_at.replace(tzinfo=UTC))
                for line_no, txn, order_no, account_no, amount, fee, status, paid_at in rows
            ]

    def close(self) -> None:
        self._db.close()
        shutil.rmtree(self._work, ignore_errors=True)

    def __enter__(self) -> "ReadStatement":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _sql_path(path: Path) -> str:
    return str(path).replace("'", "''")


def _connect(work: Path) -> duckdb.DuckDBPyConnection:
    db = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT, "temp_directory": str(work / "spill"), "preserve_insertion_order": True})
    db.execute("SET TimeZone = 'UTC'")
    return db


def _load_cells(db: duckdb.DuckDBPyConnection, body: _Body, work: Path, *, wrong_count: str) -> None:
    """Table `raw` (c0 … cN as text, rowid in file order) from the body; a line with another cell count refuses the file."""
    path = work / "body.csv"
    path.write_bytes(body.data)
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(body.header))) + "}"
    db.execute(
        f"CREATE TABLE raw AS SELECT * FROM read_csv('{_sql_path(path)}', header = true, auto_detect = false, columns = {columns}, "
        f"delim = ',', quote = '\"', escape = '\"', strict_mode = true, max_line_size = {LINE_BYTES_MAX}, "
        f"store_rejects = true, rejects_limit = {REJECTS_KEPT_MAX})"
    )
    rejected = db.execute("SELECT line, error_type, error_message FROM reject_errors ORDER BY line LIMIT 1").fetchone()
    if rejected is not None:
        line, error_type, message = rejected
        line_no = body.first_line_no + int(line) - 1
        found = re.search(r"Found: (\d+)", message or "")
        if found and error_type in ("MISSING COLUMNS", "TOO MANY COLUMNS"):
            raise StatementRefused(wrong_count.format(found=found.group(1), expected=len(body.header)), line_no=line_no)
        raise StatementRefused(f"not a CSV line we can read ({str(error_type).lower()})", line_no=line_no)


def _cell(i: int) -> str:
    return f"coalesce(c{i}, '')"


def _stripped(sql: str) -> str:
    """Python's str.strip() in SQL: trim() with a character set is slow, so only for the rare cell holding tabs or line breaks."""
    rare = " OR ".join(f"contains({sql}, chr({code}))" for code in (9, 10, 11, 12, 13))
    return f"CASE WHEN {rare} THEN trim({sql}, '{_WHITESPACE}') ELSE trim({sql}) END"


def _first_bad(db: duckdb.DuckDBPyConnection, select: str, where: str) -> tuple | None:
    return db.execute(f"SELECT {select} FROM raw WHERE {where} ORDER BY line_no LIMIT 1").fetchone()


# ---- WeChat Pay trade bill ---------------------------------------------------------------------

WECHAT_REQUIRED = ("交易时间", "微信订单号", "商户订单号", "交易状态", "应结订单金额", "退款金额", "手续费", "商户数据包")
WECHAT_SUMMARY = ("总交易单数", "应结订单总金额", "退款总金额", "手续费总金额")
_WECHAT_SUMMARY_LINE = re.compile(rb'(?m)^[ \t\r]*"?[ \t]*' + "总交易单数".encode())


def _wechat_row_check(cells: dict[str, str], i: int) -> None:
    """One line's checks, in the order the reader has always made them."""
    state = cells["交易状态"]
    if state not in ("SUCCESS", "REFUND"):
        raise StatementRefused(f"交易状态 {state!r} is neither SUCCESS nor REFUND", line_no=i)
    refunded = state == "REFUND"
    _yuan(cells["退款金额"] if refunded else cells["应结订单金额"], i, "退款金额" if refunded else "应结订单金额")
    _yuan(cells["手续费"], i, "手续费")
    _local_time(cells["交易时间"], i, "交易时间")


def read_wechat_trade_bill(raw: bytes, work: Path) -> ReadStatement:
    text = _utf8(raw, "utf-8")
    if not text:
        raise StatementRefused("empty file", code="STATEMENT_TRUNCATED")
    header_end = text.find(b"\n") + 1 or len(text)
    header = _header_cells(text[:header_end])
    columns = _columns(header, WECHAT_REQUIRED, 1)
    summary = _WECHAT_SUMMARY_LINE.search(text, header_end)
    summary_rows = list(csv.reader(io.StringIO(text[summary.start() :].decode("utf-8")))) if summary else []
    if len(summary_rows) < 2:
        raise StatementRefused("no summary rows at the end: the file is truncated", code="STATEMENT_TRUNCATED")
    body = _Body(header, 1, text[: summary.start()] if summary else text)
    if (blank := _first_empty_line(body.data)) is not None:
        raise StatementRefused(f"0 cells, the header has {len(header)}", line_no=_line_no_at(body.data, blank))
    db = _connect(work)
    try:
        _load_cells(db, body, work, wrong_count="{found} cells, the header has {expected}")
        cell = {name: _stripped(f"CASE WHEN starts_with({_cell(j)}, '`') THEN {_cell(j)}[2:] ELSE {_cell(j)} END") for name, j in columns.items()}
        db.execute(f"""CREATE TABLE cells AS SELECT rowid + 2 AS line_no, {", ".join(f'{sql} AS "{name}"' for name, sql in cell.items())} FROM raw""")
        db.execute("DROP TABLE raw")
        db.execute("ALTER TABLE cells RENAME TO raw")
        refunded = "\"交易状态\" = 'REFUND'"
        amount = f'CASE WHEN {refunded} THEN "退款金额" ELSE "应结订单金额" END'
        bad = _first_bad(
            db, ", ".join(f'"{name}"' for name in WECHAT_REQUIRED) + ", line_no",
            f"\"交易状态\" NOT IN ('SUCCESS', 'REFUND') OR NOT regexp_full_match({amount}, '{_YUAN_SQL}') "
            f"OR NOT regexp_full_match(\"手续费\", '{_YUAN_SQL}') OR try_strptime(\"交易时间\", '%Y-%m-%d %H:%M:%S') IS NULL",
        )  # fmt: skip
        if bad is not None:
            _wechat_row_check(dict(zip(WECHAT_REQUIRED, bad[:-1], strict=True)), bad[-1])
            raise StatementRefused("a line DuckDB and Python read differently", line_no=bad[-1])
        db.execute(
            f"""CREATE TABLE lines AS SELECT line_no, "微信订单号" AS channel_txn_id, nullif("商户订单号", '') AS out_trade_no,
                nullif("商户数据包", '') AS account_no, {_fen_sql(amount)} AS amount_fen, {_fen_sql('"手续费"')} AS fee_fen,
                CASE WHEN {refunded} THEN 'refunded' ELSE 'paid' END AS status,
                strptime("交易时间", '%Y-%m-%d %H:%M:%S') - INTERVAL 8 HOUR AS paid_at FROM raw"""
        )  # Beijing time has had no daylight saving since 1991: UTC is eight hours behind
        db.execute("DROP TABLE raw")
        statement = ReadStatement("wechat-trade-bill", db, work)
        summary_columns = _columns(summary_rows[0], WECHAT_SUMMARY, _line_no_at(text, summary.start()))  # type: ignore[union-attr]
        n = _line_no_at(text, summary.start()) + 1  # type: ignore[union-attr]
        if any(j >= len(summary_rows[1]) for j in summary_columns.values()):
            raise StatementRefused(f"the summary row has {len(summary_rows[1])} cells", line_no=n, code="STATEMENT_TOTALS")
        totals = {name: summary_rows[1][j].removeprefix("`").strip() for name, j in summary_columns.items()}
        if not totals["总交易单数"].isdigit() or int(totals["总交易单数"]) != statement.lines:
            raise StatementRefused(f"summary says {totals['总交易单数']} trades, the file lists {statement.lines}", line_no=n, code="STATEMENT_TOTALS")
        if _yuan(totals["应结订单总金额"], n, "应结订单总金额") != statement.paid_total_fen:
            raise StatementRefused(f"summary total {totals['应结订单总金额']} differs from the rows' {statement.paid_total_fen} fen", line_no=n, code="STATEMENT_TOTALS")
        if _yuan(totals["手续费总金额"], n, "手续费总金额") != statement.fee_total_fen:
            raise StatementRefused(f"summary fees {totals['手续费总金额']} differ from the rows' {statement.fee_total_fen} fen", line_no=n, code="STATEMENT_TOTALS")
        return statement
    except BaseException:
        db.close()
        raise


def _fen_sql(yuan: str) -> str:
    """Yuan text (checked against _YUAN_SQL) to signed fen, exactly: DECIMAL, never a float."""
    return f"(CASE WHEN starts_with({yuan}, '-') THEN -1 ELSE 1 END) * CAST(CAST(ltrim({yuan}, '-') AS DECIMAL(18, 2)) * 100 AS BIGINT)"


# ---- Alipay business bill ----------------------------------------------------------------------

ALIPAY_REQUIRED = ("支付宝交易号", "商户订单号", "业务类型", "完成时间", "订单金额（元）", "商家实收（元）", "服务费（元）", "备注")
ALIPAY_TOTAL = re.compile(r"^#交易合计：(\d+)笔，商家实收共(-?[0-9.]+)元")
_ALIPAY_TRAILER = re.compile(rb"(?m)^#")


def _alipay_row_check(cells: dict[str, str], i: int) -> None:
    kind = cells["业务类型"]
    if kind not in ("交易", "退款"):
        raise StatementRefused(f"业务类型 {kind!r} is neither 交易 nor 退款", line_no=i)
    _yuan(cells["商家实收（元）"], i, "商家实收（元）")
    _yuan(cells["服务费（元）"], i, "服务费（元）")
    _local_time(cells["完成时间"], i, "完成时间")


def read_alipay_business_bill(raw: bytes, work: Path) -> ReadStatement:
    text = _utf8(raw, "gbk")
    # The header is the first line neither empty nor a # comment; the preamble before it is a few lines.
    at, line_no = 0, 1
    while at < len(text):
        end = text.find(b"\n", at)
        end = len(text) if end < 0 else end + 1
        line = text[at:end].rstrip(b"\r\n")
        if line and not line.startswith(b"#"):
            break
        at, line_no = end, line_no + 1
    else:
        raise StatementRefused("no header row", code="STATEMENT_TRUNCATED")
    header_end = text.find(b"\n", at) + 1 or len(text)
    header = _header_cells(text[at:header_end])
    columns = _columns(header, ALIPAY_REQUIRED, line_no)
    trailer_at = _ALIPAY_TRAILER.search(text, header_end)
    body_end = trailer_at.start() if trailer_at else len(text)
    data, skipped = _without_blank_lines(text[at:body_end], line_no)
    trailer = text[body_end:].decode("utf-8").splitlines() if trailer_at else []
    db = _connect(work)
    try:
        _load_cells(db, _Body(header, line_no, data), work, wrong_count="{found} cells, the header has {expected}")
        cell = {name: _stripped(_cell(j)) for name, j in columns.items()}  # strip() then strip("\t"): the same
        db.execute(f"""CREATE TABLE cells AS SELECT rowid + {line_no + 1} AS line_no, {", ".join(f'{sql} AS "{name}"' for name, sql in cell.items())} FROM raw""")
        db.execute("DROP TABLE raw")
        db.execute("ALTER TABLE cells RENAME TO raw")
        for blank in skipped:  # ascending: each blank line pushes the lines after it down by one
            db.execute("UPDATE raw SET line_no = line_no + 1 WHERE line_no >= ?", [blank])
        bad = _first_bad(
            db, ", ".join(f'"{name}"' for name in ALIPAY_REQUIRED) + ", line_no",
            f"\"业务类型\" NOT IN ('交易', '退款') OR NOT regexp_full_match(\"商家实收（元）\", '{_YUAN_SQL}') "
            f"OR NOT regexp_full_match(\"服务费（元）\", '{_YUAN_SQL}') OR try_strptime(\"完成时间\", '%Y-%m-%d %H:%M:%S') IS NULL",
        )  # fmt: skip
        if bad is not None:
            _alipay_row_check(dict(zip(ALIPAY_REQUIRED, bad[:-1], strict=True)), bad[-1])
            raise StatementRefused("a line DuckDB and Python read differently", line_no=bad[-1])
        db.execute(
            f"""CREATE TABLE lines AS SELECT line_no, "支付宝交易号" AS channel_txn_id, nullif("商户订单号", '') AS out_trade_no,
                nullif("备注", '') AS account_no, abs({_fen_sql('"商家实收（元）"')}) AS amount_fen, abs({_fen_sql('"服务费（元）"')}) AS fee_fen,
                CASE WHEN "业务类型" = '退款' THEN 'refunded' ELSE 'paid' END AS status,
                strptime("完成时间", '%Y-%m-%d %H:%M:%S') - INTERVAL 8 HOUR AS paid_at FROM raw"""
        )
        db.execute("DROP TABLE raw")
        statement = ReadStatement("alipay-business-bill", db, work)
        totals = [m for m in (ALIPAY_TOTAL.match(line) for line in trailer) if m]
        if not totals:
            raise StatementRefused("no #交易合计 line at the end: the file is truncated", code="STATEMENT_TRUNCATED")
        count, total = int(totals[0].group(1)), _yuan(totals[0].group(2), text.count(b"\n") + (not text.endswith(b"\n")), "交易合计")
        paid_count = db.execute("SELECT count(*) FROM lines WHERE status = 'paid'").fetchone()[0]  # type: ignore[index]
        if count != paid_count or total != statement.paid_total_fen:
            raise StatementRefused(
                f"#交易合计 says {count} trades, ¥{totals[0].group(2)}; the rows hold {paid_count}, {statement.paid_total_fen} fen",
                code="STATEMENT_TOTALS",
            )
        return statement
    except BaseException:
        db.close()
        raise


def _without_blank_lines(data: bytes, header_line_no: int) -> tuple[bytes, list[int]]:
    """Alipay's reader has always skipped empty lines: the data without them, and their line numbers."""
    if _first_blank_line(data) is None:
        return data, []
    kept, skipped, at, line_no = io.BytesIO(), [], 0, header_line_no
    for match in _BLANK_LINE.finditer(data):
        if match.start() >= len(data.rstrip(b"\r\n")):
            break
        line_no += data.count(b"\n", at, match.start())
        kept.write(data[at : match.start()])
        skipped.append(line_no)
        at = match.end()
        line_no += 1
    kept.write(data[at:])
    return kept.getvalue(), skipped


# ---- plain CSV: wallets, banks, kiosks, counters -----------------------------------------------

PLAIN_HEADER = ("txn_id", "account_no", "amount_fen", "paid_at", "status")
_OFFSET = "(Z|z|[+-][0-9]{2}(:?[0-9]{2}(:?[0-9]{2}(\\.[0-9]{1,6})?)?)?)"


def _plain_row_check(cells: tuple[str, ...], i: int) -> None:
    _txn_id, _account_no, amount, paid_at, status = cells
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


def read_plain_csv(raw: bytes, work: Path) -> ReadStatement:
    text = _utf8(raw, "utf-8")
    header_end = text.find(b"\n") + 1 or len(text)
    if not text or tuple(c.strip() for c in _header_cells(text[:header_end])) != PLAIN_HEADER:
        raise StatementRefused(f"the header must be {','.join(PLAIN_HEADER)}", line_no=1, code="STATEMENT_COLUMNS")
    content = text[:-1] if text.endswith(b"\n") else text
    last_at = content.rfind(b"\n") + 1
    total_row = next(csv.reader([content[last_at:].decode("utf-8").rstrip("\r")]), [])
    if last_at < header_end or not total_row or total_row[0].strip() != "# total":
        raise StatementRefused("no '# total' line at the end: the file is truncated", code="STATEMENT_TRUNCATED")
    body = _Body(list(PLAIN_HEADER), 1, text[:last_at])
    if (blank := _first_empty_line(body.data)) is not None:
        raise StatementRefused(f"0 cells, expected {len(PLAIN_HEADER)}", line_no=_line_no_at(body.data, blank))
    db = _connect(work)
    try:
        _load_cells(db, body, work, wrong_count="{found} cells, expected {expected}")
        names = ("txn_id", "account_no", "amount", "paid_at", "status")
        trimmed = ", ".join(f"{_stripped(_cell(i))} AS {name}" for i, name in enumerate(names))
        db.execute(f"CREATE TABLE cells AS SELECT rowid + 2 AS line_no, {trimmed} FROM raw")
        db.execute("DROP TABLE raw")
        db.execute("ALTER TABLE cells RENAME TO raw")
        bad = _first_bad(
            db, "txn_id, account_no, amount, paid_at, status, line_no",
            "NOT regexp_full_match(amount, '[0-9]+') OR ltrim(amount, '0') = '' OR status NOT IN ('SUCCESS', 'REFUND') "
            f"OR try_cast(paid_at AS TIMESTAMPTZ) IS NULL OR NOT regexp_matches(paid_at, '[0-9]{_OFFSET}$')",
        )  # fmt: skip
        if bad is not None:
            _plain_row_check(bad[:-1], bad[-1])
            raise StatementRefused("a line DuckDB and Python read differently", line_no=bad[-1])
        db.execute(
            """CREATE TABLE lines AS SELECT line_no, txn_id AS channel_txn_id, NULL::VARCHAR AS out_trade_no, nullif(account_no, '') AS account_no,
                try_cast(amount AS HUGEINT) AS amount_fen, 0::BIGINT AS fee_fen, CASE WHEN status = 'REFUND' THEN 'refunded' ELSE 'paid' END AS status,
                CAST(CAST(paid_at AS TIMESTAMPTZ) AS TIMESTAMP) AS paid_at FROM raw"""
        )
        db.execute("DROP TABLE raw")
        statement = ReadStatement("plain-csv", db, work)
        total_line_no = _line_no_at(text, last_at)
        if len(total_row) < 3 or not total_row[1].strip().isdigit() or not total_row[2].strip().lstrip("-").isdigit():
            raise StatementRefused("the '# total' line must be: # total,<count>,<fen>", line_no=total_line_no, code="STATEMENT_TOTALS")
        if int(total_row[1]) != statement.lines or int(total_row[2]) != statement.paid_total_fen:
            raise StatementRefused(
                f"'# total' says {total_row[1].strip()} lines, {total_row[2].strip()} fen; the rows hold {statement.lines}, {statement.paid_total_fen} fen",
                line_no=total_line_no, code="STATEMENT_TOTALS",
            )  # fmt: skip
        return statement
    except BaseException:
        db.close()
        raise


READERS = {
    "wechat-trade-bill": read_wechat_trade_bill,
    "alipay-business-bill": read_alipay_business_bill,
    "plain-csv": read_plain_csv,
}


def read_statement(format_: str, raw: bytes) -> ReadStatement:
    """The whole file read and checked, or StatementRefused. Use as a context manager: it holds a DuckDB table and a work directory."""
    reader = READERS.get(format_)
    if reader is None:
        raise StatementRefused(f"unknown statement format {format_!r}; known: {', '.join(READERS)}", code="STATEMENT_FORMAT")
    if len(raw) > FILE_BYTES_MAX:
        raise StatementRefused(f"file over {FILE_BYTES_MAX} bytes", code="STATEMENT_TOO_LARGE")
    work = Path(tempfile.mkdtemp(prefix="gasworks-statement-"))
    try:
        statement = reader(raw, work)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    try:
        if statement.lines > LINES_MAX:
            raise StatementRefused(f"more than {LINES_MAX} lines", code="STATEMENT_TOO_LARGE")
        bad = statement._db.execute(f"SELECT {', '.join(LINE_COLUMNS)} FROM lines WHERE {_OUT_OF_BOUNDS_SQL} ORDER BY line_no LIMIT 1").fetchone()
        if bad is not None:
            line_no, txn, order_no, account_no, amount, fee, status, paid_at = bad
            _check_bounds(StatementLine(line_no, txn, order_no, account_no, int(amount) if amount is not None else 0, int(fee or 0), LineStatus(status), paid_at))
            raise StatementRefused("a line DuckDB and Python bound differently", line_no=line_no)
    except BaseException:
        statement.close()
        raise
    return statement
