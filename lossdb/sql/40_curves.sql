-- The standard curves. mean_loss = total loss / tokens, n = tokens (sums of BIGINT are cast
-- back from HUGEINT).

-- Loss by context position, per training segment (study Fig. 1).
CREATE OR REPLACE VIEW position_curve AS
SELECT run, segment, position, sum(loss_sum) / sum(n) AS mean_loss, CAST(sum(n) AS BIGINT) AS n
FROM _position_sums
GROUP BY run, segment, position
ORDER BY run, segment, position;

-- Loss by vocabulary bucket of the target token, per segment (study Fig. 3). Buckets come from
-- the vocabulary of the run's data set (runs.dataset); bucket is NULL for tokens that cannot be
-- placed (no run.json, no vocab.parquet for that data set, or a token id missing from it).
CREATE OR REPLACE VIEW bucket_curve AS
WITH run_buckets AS (  -- each run's token ids with their bucket, from its data set's vocabulary
    SELECT r.run, v.token_id, v.bucket
    FROM runs AS r
    JOIN vocab AS v ON v.dataset = r.dataset
)
SELECT t.run, t.segment, b.bucket, sum(t.loss_sum) / sum(t.n) AS mean_loss, CAST(sum(t.n) AS BIGINT) AS n
FROM _token_sums AS t
LEFT JOIN run_buckets AS b ON b.run = t.run AND b.token_id = t.token_id
GROUP BY t.run, t.segment, b.bucket
ORDER BY t.run, t.segment, b.bucket;

-- Loss per optimizer step against tokens trained up to and including that step.
CREATE OR REPLACE VIEW learning_curve AS
WITH per_step AS (
    SELECT run, step, sum(loss_sum) AS loss_sum, sum(n) AS n
    FROM _step_sums
    GROUP BY run, step
)
SELECT
    run,
    CAST(sum(n) OVER (PARTITION BY run ORDER BY step ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS BIGINT) AS tokens,
    loss_sum / n AS mean_loss
FROM per_step
ORDER BY run, tokens;
