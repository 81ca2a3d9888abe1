"""Apache Spark (PySpark, local[2]) reads the live loss table and a release, and its SQL gives DuckDB's curves.

Needs pyspark and Java 17; skipped without them. One Spark session for the whole module (it takes
~10-20 s to start on two cores).
"""

from __future__ import annotations

import os
import shutil
from collections import defaultdict

import pytest

pyspark = pytest.importorskip("pyspark")
if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
    pytest.skip("Spark needs Java 17 (no java on PATH, no JAVA_HOME)", allow_module_level=True)

import lossdb  # noqa: E402
from lossdb.export import RELEASE_SCHEMA, export_release, spark_ddl  # noqa: E402
from lossdb.schema import LOSS_SCHEMA, temp_name  # noqa: E402
from lossdb.synthetic import SyntheticDataset, SyntheticRun, make_workspace  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")

# The live table's columns plus its hive keys, typed as the DuckDB views type them.
LIVE_DDL = spark_ddl(LOSS_SCHEMA) + ", run STRING, segment INT"
CURVE_SQL = """
SELECT run, segment, position, avg(CAST(loss AS DOUBLE)) AS mean_loss, count(*) AS n
FROM {table} GROUP BY run, segment, position
"""


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("configaformer-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.driver.memory", "1g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    home = tmp_path_factory.mktemp("ws")
    workspace = make_workspace(
        home,
        [SyntheticDataset("synth", n_sequences=64, seq_len=16, vocab_size=40)],
        [
            SyntheticRun("base", steps=8, batch_size=4, flush_every=3),
            SyntheticRun("123", steps=4, batch_size=4, ranks=2, seed=1, rollups=False),  # a name like a number
        ],
    )
    torn = home / "lossdb/losses/run=base/segment=0" / temp_name("part-0-999.parquet", "1")
    torn.write_bytes(b"PAR1 torn")  # a crashed write: Spark must skip it (hidden name)
    return workspace


def duckdb_curve(home) -> dict:
    rows = lossdb.connect(home).sql("SELECT run, segment, position, mean_loss, n FROM position_curve").fetchall()
    return {(run, segment, position): (mean, n) for run, segment, position, mean, n in rows}


def assert_matches(spark_rows, want: dict) -> None:
    got = {(r["run"], r["segment"], r["position"]): (r["mean_loss"], r["n"]) for r in spark_rows}
    assert got.keys() == want.keys()
    for key, (mean, n) in want.items():
        assert got[key][1] == n, key
        assert got[key][0] == pytest.approx(mean, rel=1e-9), key


def test_hive_discovery_reads_run_as_string_and_segment_as_int(spark, ws):
    root = str(ws.home / "lossdb" / "losses")
    inferred = spark.read.parquet(root)
    assert dict(inferred.dtypes)["run"] == "string"  # "base" and "123" together infer a string
    assert dict(inferred.dtypes)["segment"] == "int"
    declared = spark.read.schema(LIVE_DDL).parquet(root)  # what docs/releasing.md recommends
    types = dict(declared.dtypes)
    assert (types["run"], types["segment"], types["position"], types["loss"]) == ("string", "int", "smallint", "float")
    counts = {r["run"]: r["n"] for r in declared.groupBy("run").count().withColumnRenamed("count", "n").collect()}
    assert counts == {run: len(rows.loss) for run, rows in ws.runs.items()}
    # one run named like a number: without the schema Spark would guess an int; with it, a string
    only_number = spark.read.schema(LIVE_DDL).option("basePath", root).parquet(f"{root}/run=123")
    assert {r["run"] for r in only_number.select("run").distinct().collect()} == {"123"}


def test_position_curve_in_spark_sql_matches_duckdb(spark, ws):
    spark.read.schema(LIVE_DDL).parquet(str(ws.home / "lossdb" / "losses")).createOrReplaceTempView("losses")
    rows = spark.sql(CURVE_SQL.format(table="losses")).collect()
    assert_matches(rows, duckdb_curve(ws.home))
    # and against plain Python over the stored rows
    sums = defaultdict(lambda: [0.0, 0])
    for run, r in ws.runs.items():
        for segment, position, loss in zip(r.segment.tolist(), r.position.tolist(), r.loss.tolist()):
            sums[run, segment, position][0] += loss
            sums[run, segment, position][1] += 1
    assert_matches(rows, {key: (total / n, n) for key, (total, n) in sums.items()})


def test_a_release_reads_in_spark(spark, ws, tmp_path):
    out = tmp_path / "release"
    export_release(ws.home, ["base", "123"], out, max_shard_bytes=2_000, row_group_rows=48, progress=False)
    data = spark.read.schema(spark_ddl(RELEASE_SCHEMA)).parquet(str(out / "data"))
    assert dict(data.dtypes)["run"] == "string"
    data.createOrReplaceTempView("release_losses")
    assert_matches(spark.sql(CURVE_SQL.format(table="release_losses")).collect(), duckdb_curve(ws.home))
    # a release of only the run named "123": Spark's partition discovery would type the folder
    # run=123 as an int (overriding the column); the declared schema keeps the name a string
    only = tmp_path / "only123"
    export_release(ws.home, ["123"], only, progress=False)
    declared = spark.read.schema(spark_ddl(RELEASE_SCHEMA)).parquet(str(only / "data"))
    assert dict(declared.dtypes) == {"step": "int", "seq": "bigint", "position": "smallint", "token_id": "int",
                                     "loss": "float", "run": "string", "segment": "int"}
    assert [r["run"] for r in declared.select("run").distinct().collect()] == ["123"]
    meta = spark.read.parquet(str(only / "runs.parquet")).collect()
    assert meta[0]["tokens_trained"] == len(ws.runs["123"].loss)
