"""The loss table: its schema and writer (pyarrow only) and DuckDB views over it.

    import lossdb
    con = lossdb.connect(home)            # DuckDB connection with the views of DESIGN.md
    con.sql("SELECT * FROM position_curve WHERE run = 'base'").pl()

duckdb is imported inside functions, so `import lossdb.writer` works on a box without it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Statement types a read-only query may have (DESCRIBE, SHOW and SUMMARIZE parse as SELECT).
READ_STATEMENT_TYPES = ("SELECT", "EXPLAIN")


def resolve_home(home: str | os.PathLike | None) -> Path:
    """The workspace folder, absolute (None: $CONFIGAFORMER_HOME, else ./workspace)."""
    if home is None:
        home = os.environ.get("CONFIGAFORMER_HOME") or "workspace"
    return Path(home).resolve()


def connect(home: str | os.PathLike | None = None, read_only: bool = True):
    """A DuckDB connection with the loss table's views over the workspace at `home`.

    Views: losses, runs, vocab, position_curve, bucket_curve, learning_curve, and the table
    macros relative_position_curve(baseline), relative_bucket_curve(baseline),
    relative_learning_curve(baseline) (see lossdb/sql/). A workspace with no runs or no loss
    files yet gets empty views (reconnect once the first files exist); after that, every query
    sees the part files on disk at that moment.

    read_only=True (default): the views live in a database DuckDB opened read-only, so the main
    catalog cannot be changed (TEMP tables and views still work). DuckDB cannot stop COPY ... TO
    from a Python connection; `python cli.py sql` refuses every statement but a read query.
    read_only=False: an ordinary in-memory database holding the views.
    """
    import duckdb

    from lossdb.views import create_views

    home = resolve_home(home)
    if not read_only:
        con = duckdb.connect()
        create_views(con, home)
        return con
    scratch = Path(tempfile.mkdtemp(prefix="lossdb-"))
    atexit.register(shutil.rmtree, scratch, ignore_errors=True)
    database = scratch / "views.duckdb"
    write_database_file(home, database)
    # Spilled intermediates go to the scratch folder too (the default sits next to the file).
    con = duckdb.connect(str(database), read_only=True, config={"temp_directory": str(scratch / "spill")})
    database.unlink()  # the open connection keeps it readable; nothing is left behind
    return con


def write_database_file(home: str | os.PathLike | None, out: str | os.PathLike) -> Path:
    """Write a DuckDB database file holding the views (absolute paths), for the duckdb CLI or notebooks."""
    import duckdb

    from lossdb.views import create_views

    out = Path(out)
    con = duckdb.connect(str(out))
    try:
        create_views(con, resolve_home(home))
    finally:
        con.close()
    return out


def check_read_query(con, sql: str) -> None:
    """Raise ValueError unless `sql` is exactly one read statement (SELECT, WITH, DESCRIBE, EXPLAIN ...)."""
    statements = con.extract_statements(sql)
    if len(statements) != 1:
        raise ValueError(f"expected exactly one SQL statement, got {len(statements)}")
    kind = statements[0].type.name
    if kind not in READ_STATEMENT_TYPES:
        raise ValueError(f"only read queries are allowed (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN), got {kind}")
