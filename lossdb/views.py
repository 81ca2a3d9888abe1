"""The DuckDB views over a workspace: source relations decided here, everything else in sql/*.sql.

Sources are the only part that depends on which files exist: DuckDB's `read_parquet` fails on a
glob with no match, so a source with no file yet becomes an empty relation of the same columns,
which stays empty until you reconnect. A source that has files re-reads its glob in every query,
so parts and runs written later appear at once. Paths are absolute, so a saved `.duckdb` file
works from any working directory (DESIGN pitfall). The derived views (runs, vocab, curves,
relative macros) live in `lossdb/sql/*.sql`, executed in name order.

Source relations (internal, but queryable):
  _loss_rows                         the raw loss table + run VARCHAR, segment INTEGER (hive keys),
                                     filename (the public `losses` view drops it)
  _rollup_{position,token,step}_rows the rollup files, same keys
  _loss_files, _rollup_*_files       (file, part): the part files now on disk; `part` is the path
                                     below the table's root, equal for a part and its rollups
  _run_json_files                    one row per runs/*/run.json (json, NULL if malformed; filename)
  _vocab_files                       every data/*/vocab.parquet row (+ filename)
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from lossdb.schema import LOSS_SCHEMA, ROLLUP_KINDS, ROLLUP_SCHEMAS, duckdb_type, losses_root, rollups_root

SQL_DIR = Path(__file__).parent / "sql"
PART_GLOB = "run=*/segment=*/part-*.parquet"  # never matches the hidden ".part-*.tmp" temp files
HIVE_KEYS = {"run": "VARCHAR", "segment": "INTEGER"}  # run names like "123" must stay text

VOCAB_COLUMNS = {  # DESIGN.md "Data set folder": vocab.parquet
    "token_id": "INTEGER",
    "text": "VARCHAR",
    "count": "BIGINT",
    "rank": "INTEGER",
    "bucket": "INTEGER",
    "is_word_start": "BOOLEAN",
}


def sql_string(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _empty(columns: dict[str, str]) -> str:
    """A relation with these typed columns and no rows."""
    casts = ", ".join(f"CAST(NULL AS {t}) AS {name}" for name, t in columns.items())
    return f"SELECT {casts} WHERE false"


def _arrow_columns(schema: pa.Schema) -> dict[str, str]:
    return {f.name: duckdb_type(f.type) for f in schema}


def _hive_parquet(table_root: Path, schema: pa.Schema) -> str:
    """Rows of every part file under `table_root`, with the hive keys and the file's path."""
    if not any(table_root.glob(PART_GLOB)):
        return _empty({**_arrow_columns(schema), **HIVE_KEYS, "filename": "VARCHAR"})
    hive_types = "{" + ", ".join(f"{sql_string(k)}: {t}" for k, t in HIVE_KEYS.items()) + "}"
    pattern = sql_string(f"{table_root}/{PART_GLOB}")
    return (
        f"SELECT * FROM read_parquet({pattern}, hive_partitioning = true, hive_types = {hive_types}, "
        "filename = true)"
    )


def _part_files(table_root: Path) -> str:
    """Part files under `table_root` now: full path, and `part` = path relative to the root.

    glob() is evaluated at query time and is empty (not an error) when nothing matches.
    """
    prefix = f"{table_root}/"
    return (
        f"SELECT file, substr(file, {len(prefix) + 1}) AS part "
        f"FROM glob({sql_string(prefix + PART_GLOB)})"
    )


def source_statements(home: Path) -> list[str]:
    """CREATE VIEW statements for the source relations of the workspace at `home` (absolute)."""
    lossdb_root = home / "lossdb"
    tables = {"loss": (losses_root(lossdb_root), LOSS_SCHEMA)}
    for kind in ROLLUP_KINDS:
        tables[f"rollup_{kind}"] = (rollups_root(lossdb_root, kind), ROLLUP_SCHEMAS[kind])
    statements = []
    for name, (root, schema) in tables.items():
        statements.append(f"CREATE OR REPLACE VIEW _{name}_rows AS {_hive_parquet(root, schema)}")
        statements.append(f"CREATE OR REPLACE VIEW _{name}_files AS {_part_files(root)}")

    if any((home / "runs").glob("*/run.json")):
        pattern = sql_string(f"{home}/runs/*/run.json")
        # read_text + json_valid: a torn or hand-broken run.json gives NULLs, not a failed query
        run_json = (
            f"SELECT CASE WHEN json_valid(content) THEN CAST(content AS JSON) END AS json, filename "
            f"FROM read_text({pattern})"
        )
    else:
        run_json = _empty({"json": "JSON", "filename": "VARCHAR"})
    statements.append(f"CREATE OR REPLACE VIEW _run_json_files AS {run_json}")

    if any((home / "data").glob("*/vocab.parquet")):
        pattern = sql_string(f"{home}/data/*/vocab.parquet")
        vocab = f"SELECT * FROM read_parquet({pattern}, filename = true, union_by_name = true)"
    else:
        vocab = _empty({**VOCAB_COLUMNS, "filename": "VARCHAR"})
    statements.append(f"CREATE OR REPLACE VIEW _vocab_files AS {vocab}")
    return statements


def create_views(con, home: Path) -> None:
    """Create every view and macro of the public SQL interface on DuckDB connection `con`."""
    home = Path(home).resolve()
    for statement in source_statements(home):
        con.execute(statement)
    for path in sorted(SQL_DIR.glob("*.sql")):
        con.execute(path.read_text())
