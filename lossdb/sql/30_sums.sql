-- Sums and counts per (run, segment, key): the input of every standard curve.
-- Decided per part file: a part that has a rollup of this kind is read from the rollup (small),
-- a part without one (e.g. a table copied in; `python cli.py lossdb rollup` builds them) is
-- aggregated from its raw rows, so both give the same numbers. A rollup is trusted to describe
-- a part on disk: the writer renames a part before its rollups and discard_after deletes
-- rollups before their part, so a crash never leaves a rollup without its part.
-- The IN (...) filter on filename is pushed into the Parquet scan at run time: when every part
-- has its rollup, no raw file is opened at all.

CREATE OR REPLACE VIEW _position_sums AS
SELECT run, segment, position, loss_sum, n
FROM _rollup_position_rows
UNION ALL
SELECT run, segment, position, sum(CAST(loss AS DOUBLE)) AS loss_sum, count(*) AS n
FROM _loss_rows
WHERE filename IN (SELECT file FROM _loss_files WHERE part NOT IN (SELECT part FROM _rollup_position_files))
GROUP BY run, segment, position;

CREATE OR REPLACE VIEW _token_sums AS
SELECT run, segment, token_id, loss_sum, n
FROM _rollup_token_rows
UNION ALL
SELECT run, segment, token_id, sum(CAST(loss AS DOUBLE)) AS loss_sum, count(*) AS n
FROM _loss_rows
WHERE filename IN (SELECT file FROM _loss_files WHERE part NOT IN (SELECT part FROM _rollup_token_files))
GROUP BY run, segment, token_id;

CREATE OR REPLACE VIEW _step_sums AS
SELECT run, segment, step, loss_sum, n
FROM _rollup_step_rows
UNION ALL
SELECT run, segment, step, sum(CAST(loss AS DOUBLE)) AS loss_sum, count(*) AS n
FROM _loss_rows
WHERE filename IN (SELECT file FROM _loss_files WHERE part NOT IN (SELECT part FROM _rollup_step_files))
GROUP BY run, segment, step;
