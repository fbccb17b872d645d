"""Read-only SQL for the live view: one SELECT over the records, nothing else.

Three locks, each enough alone for what it guards:
- the statement: exactly one, and a SELECT (no COPY, ATTACH, INSTALL, LOAD, SET, PRAGMA,
  CREATE or INSERT);
- the connection: DuckDB's external access disabled and its configuration locked after the
  views are made, so no file but the records can be read (`read_csv('/etc/passwd')`,
  `glob`) and no extension loaded, whatever the statement;
- the cost: a time limit (the query is interrupted) and a row cap.
"""

from __future__ import annotations

import json
import threading

import duckdb
import pandas as pd
import pyarrow as pa

from .api import ROW_CAP, BadRequest

MAX_QUERY_CHARS = 100_000


def lock_down(con: duckdb.DuckDBPyConnection) -> None:
    """After the views exist: no file access outside them, and no way to turn it back on."""
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def check_statement(con: duckdb.DuckDBPyConnection, query) -> None:
    """BadRequest unless `query` is one SELECT statement."""
    if not isinstance(query, str) or not query.strip():
        raise BadRequest("query: `a non-empty SQL string` must hold, but got " + repr(query)[:80])
    if len(query) > MAX_QUERY_CHARS:
        raise BadRequest(f"query: `at most {MAX_QUERY_CHARS:,} characters` must hold, but got {len(query):,}")
    try:
        statements = con.extract_statements(query)
    except duckdb.Error as e:
        raise BadRequest(f"query: {e}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.query.split(maxsplit=1)[0].upper() for s in statements if s.query.strip()) or "none"
        raise BadRequest(f"query: `one SELECT statement (read-only)` must hold, but got {kinds}")


def run(con: duckdb.DuckDBPyConnection, query, limit: int = ROW_CAP, timeout: float = 10.0) -> pd.DataFrame:
    """Run one SELECT on a connection with the records' views (closed after), returning at most
    `limit` + 1 rows (one more than the cap says the result was cut). BadRequest for anything
    refused, a query error, or a query interrupted at `timeout` seconds."""
    timer = threading.Timer(timeout, con.interrupt)
    try:
        check_statement(con, query)
        lock_down(con)
        timer.start()
        reader = con.sql(query).to_arrow_reader(4096)
        batches, n = [], 0
        for batch in reader:
            batches.append(batch)
            n += batch.num_rows
            if n > limit:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema).slice(0, limit + 1)
        for i, f in enumerate(table.schema):  # DuckDB's exact sums and literals: numbers in JSON, not strings
            if pa.types.is_decimal(f.type):
                table = table.set_column(i, f.name, table.column(i).cast(pa.float64()))
        return table.to_pandas()
    except duckdb.InterruptException:
        raise BadRequest(f"query: `finishes within the time limit` must hold, but it ran past {timeout:g} s") from None
    except duckdb.Error as e:
        raise BadRequest(f"query: {type(e).__name__}: {e}") from None
    finally:
        timer.cancel()
        con.close()


def answer(df: pd.DataFrame, limit: int = ROW_CAP) -> dict:
    """`run`'s result as the API's JSON: columns, rows as lists (at most `limit`; NaN as null)
    and whether the result was cut at the cap."""
    rows = json.loads(df.head(limit).to_json(orient="values", double_precision=15, date_format="iso"))
    return {"columns": [str(c) for c in df.columns], "rows": rows, "truncated": len(df) > limit}
