-- paired(run_a, run_b [, segments := [k, ...]]): two runs' losses of the same token side by side.
-- One row per token both runs trained: step, segment (run_a's), seq, position, token_id,
-- loss_a, loss_b, delta = loss_b - loss_a (negative where run_b has the lower loss).
--
-- Refused with an error naming the runs, before or while reading:
--   an unknown run; a run paired with itself; a missing or different dataset_sha256 in run.json;
--   different tokens_per_step (steps cannot line up); different order_sha256 where both plan the
--   same number of steps (same length, different order); and, decisively, any step (up to the
--   last one both runs have recorded) at which the two runs did not train the same (seq,
--   position) rows: their steps do not line up or their data order differs.
-- Steps past the shorter run's last recorded step are left out (e.g. while one still trains).
--
-- It is a hash join of two runs' raw rows: fine for a segment or two; for every
-- curve over whole runs use analysis/paired.py (a positional join, docs/paired.md).
-- `segments` restricts it to those segments of run_a (and run_b's rows of the same steps), so
-- only they are read: SELECT * FROM paired('base', 'shift', segments := [9]).
CREATE OR REPLACE MACRO paired(run_a, run_b, segments := NULL) AS TABLE
WITH info AS (
    SELECT run, dataset, dataset_sha256,
           run_json ->> '$.order_sha256' AS order_sha256,
           TRY_CAST(run_json ->> '$.tokens_per_step' AS BIGINT) AS tokens_per_step,
           TRY_CAST(run_json ->> '$.total_steps' AS BIGINT) AS total_steps
    FROM runs
    WHERE run = run_a OR run = run_b
),
checked AS (
    SELECT CASE
        WHEN a.run IS NULL THEN error(format('paired: unknown run {}', run_a))
        WHEN b.run IS NULL THEN error(format('paired: unknown run {}', run_b))
        WHEN run_a = run_b THEN error(format('paired: cannot pair run {} with itself', run_a))
        WHEN a.dataset_sha256 IS NULL OR b.dataset_sha256 IS NULL THEN error(format(
            'paired: cannot pair runs {} and {}: run.json of {} has no dataset_sha256',
            run_a, run_b, CASE WHEN a.dataset_sha256 IS NULL THEN run_a ELSE run_b END))
        WHEN a.dataset_sha256 <> b.dataset_sha256 THEN error(format(
            'paired: cannot pair runs {} and {}: they trained different data sets ({} sha256 {}, {} sha256 {})',
            run_a, run_b, a.dataset, left(a.dataset_sha256, 12), b.dataset, left(b.dataset_sha256, 12)))
        WHEN a.tokens_per_step <> b.tokens_per_step THEN error(format(
            'paired: cannot pair runs {} and {}: their steps do not line up ({} vs {} tokens per step)',
            run_a, run_b, a.tokens_per_step, b.tokens_per_step))
        WHEN a.order_sha256 <> b.order_sha256 AND a.total_steps = b.total_steps THEN error(format(
            'paired: cannot pair runs {} and {}: their data order differs (order_sha256 {} vs {})',
            run_a, run_b, left(a.order_sha256, 12), left(b.order_sha256, 12)))
        ELSE true
    END AS ok
    FROM (SELECT 1) AS one
    LEFT JOIN info AS a ON a.run = run_a
    LEFT JOIN info AS b ON b.run = run_b
),
steps AS (  -- per-step sums come from the rollups: no raw row is read here
    SELECT
        least((SELECT max(step) FROM _step_sums WHERE run = run_a),
              (SELECT max(step) FROM _step_sums WHERE run = run_b)) AS last_step,
        (SELECT min(step) FROM _step_sums
         WHERE run = run_a AND (segments IS NULL OR list_contains(segments, segment))) AS first_chosen,
        (SELECT max(step) FROM _step_sums
         WHERE run = run_a AND (segments IS NULL OR list_contains(segments, segment))) AS last_chosen
),
a AS (
    SELECT step, segment, seq, position, token_id, loss FROM losses
    WHERE run = run_a AND (segments IS NULL OR list_contains(segments, segment))
      AND step <= (SELECT least(last_step, last_chosen) FROM steps)
),
b AS (
    SELECT step, seq, position, loss FROM losses
    WHERE run = run_b AND step >= (SELECT first_chosen FROM steps)
      AND step <= (SELECT least(last_step, last_chosen) FROM steps)
),
-- Which sequences each step trained, per run: a count and a sum of hash(seq, position) per step.
-- Two runs that trained the same (seq, position) rows at every step have equal fingerprints;
-- an uncorrelated scalar subquery is computed whole before any row is returned, so the check
-- holds for LIMIT queries too (a FULL JOIN's unmatched rows would not be seen there).
fingerprints AS (
    SELECT 'a' AS side, step, count(*) AS n, sum(CAST(hash(seq, position) AS HUGEINT)) AS h FROM a GROUP BY step
    UNION ALL
    SELECT 'b' AS side, step, count(*) AS n, sum(CAST(hash(seq, position) AS HUGEINT)) AS h FROM b GROUP BY step
),
first_mismatch AS (
    SELECT min(coalesce(fa.step, fb.step)) AS step
    FROM (SELECT * FROM fingerprints WHERE side = 'a') AS fa
    FULL JOIN (SELECT * FROM fingerprints WHERE side = 'b') AS fb ON fa.step = fb.step
    WHERE fa.n IS DISTINCT FROM fb.n OR fa.h IS DISTINCT FROM fb.h
),
rows_checked AS (
    SELECT CASE
        WHEN step IS NOT NULL THEN error(format(
            'paired: cannot pair runs {} and {}: at step {} they did not train the same (seq, position) rows '
            '(their steps do not line up or their data order differs)', run_a, run_b, step))
        ELSE true
    END AS ok
    FROM first_mismatch
)
SELECT a.step, a.segment, a.seq, a.position, a.token_id,
       a.loss AS loss_a, b.loss AS loss_b, CAST(b.loss AS DOUBLE) - a.loss AS delta
FROM a
JOIN b ON a.step = b.step AND a.seq = b.seq AND a.position = b.position
WHERE (SELECT ok FROM checked) AND (SELECT ok FROM rows_checked);
