"""Read-only SQL over the views, and its output as a table, CSV, JSON or Parquet (`cli.py sql`)."""

from __future__ import annotations

import decimal
import io
import json
import math
from pathlib import Path

import pyarrow as pa

FORMATS = ("table", "csv", "json", "parquet")
JSON_MARK = b"lossdb_json"  # field metadata key of a column that holds JSON text


class QueryError(Exception):
    """A query that cannot run: the message is one line (DuckDB's own message, newlines folded)."""


def one_line(message: str) -> str:
    """DuckDB's multi-line message on one line (the caret line under the query is dropped)."""
    lines = [line.strip() for line in str(message).splitlines()]
    return " ".join(line for line in lines if line and set(line) != {"^"})


def run_read_query(con, sql: str) -> pa.Table:
    """Run one read statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) on `con`."""
    import duckdb

    from lossdb import check_read_query

    try:
        check_read_query(con, sql)
        relation = con.sql(sql)
        table = relation.to_arrow_table()
    except ValueError as error:
        raise QueryError(str(error)) from None
    except duckdb.Error as error:
        raise QueryError(one_line(str(error))) from None
    # Arrow carries DuckDB's JSON columns as plain strings: mark them, so JSON output nests them.
    fields = [
        field.with_metadata({JSON_MARK: b"1"}) if str(duckdb_type) == "JSON" else field
        for field, duckdb_type in zip(table.schema, relation.types)
    ]
    return table.cast(pa.schema(fields))


def format_for(out: Path | None, fmt: str | None) -> str:
    """The output format: `fmt` if given, else from the --out suffix, else "table"."""
    if fmt is None:
        suffix = out.suffix.lstrip(".").lower() if out is not None else ""
        fmt = suffix if suffix in FORMATS else "table"
    if fmt not in FORMATS:
        raise QueryError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "parquet" and out is None:
        raise QueryError("--format parquet needs --out FILE (Parquet is binary)")
    return fmt


def _python_value(value):
    """A value JSON and CSV can hold: NaN/inf become null, nested values stay nested."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _is_nested(arrow_type: pa.DataType) -> bool:
    return pa.types.is_nested(arrow_type)


def _json_default(value):
    if hasattr(value, "isoformat"):  # dates and times
        return value.isoformat()
    if isinstance(value, decimal.Decimal):  # DuckDB HUGEINT and DECIMAL
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def to_json(table: pa.Table) -> str:
    """A JSON array with one object per row, one row per line; JSON columns nested as objects."""
    json_columns = {f.name for f in table.schema if f.metadata and JSON_MARK in f.metadata}
    rows = []
    for row in table.to_pylist():
        rows.append({
            k: json.loads(v) if k in json_columns and v is not None else _python_value(v) for k, v in row.items()
        })
    body = ",\n".join(json.dumps(row, default=_json_default, ensure_ascii=False) for row in rows)
    return "[\n" + body + "\n]\n" if rows else "[]\n"


def to_csv(table: pa.Table) -> str:
    """CSV with a header; nested values (lists, structs) as JSON text, NaN as empty."""
    import csv

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(table.column_names)
    nested = [_is_nested(field.type) for field in table.schema]
    for row in table.to_pylist():
        cells = []
        for value, is_nested in zip(row.values(), nested):
            value = _python_value(value)
            if value is None:
                cells.append("")
            elif is_nested:
                cells.append(json.dumps(value, default=str))
            else:
                cells.append(value)
        writer.writerow(cells)
    return buffer.getvalue()


def write_parquet(table: pa.Table, out: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(table, out, compression="zstd")


def rich_table(table: pa.Table, max_rows: int):
    """A rich Table of the first `max_rows` rows (floats to 6 significant digits)."""
    from rich.table import Table

    view = Table(show_lines=False)
    for field in table.schema:
        numeric = pa.types.is_integer(field.type) or pa.types.is_floating(field.type) or pa.types.is_decimal(field.type)
        view.add_column(f"{field.name}\n[dim]{field.type}[/dim]", justify="right" if numeric else "left")
    for row in table.slice(0, max_rows).to_pylist():
        view.add_row(*(_cell(v) for v in row.values()))
    return view


def _cell(value) -> str:
    from rich.markup import escape

    if value is None:
        return "[dim]NULL[/dim]"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (dict, list)):
        return escape(json.dumps(value, default=str))
    return escape(str(value))
