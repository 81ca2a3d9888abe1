-- Curves relative to a baseline run: SELECT * FROM relative_position_curve('baseline-run').
-- Every run (the baseline too) is matched to the baseline's value at the same segment and x:
-- ratio = mean_loss / baseline_loss, difference = mean_loss - baseline_loss. Points the
-- baseline lacks are left out, so an unknown baseline gives an empty result.

CREATE OR REPLACE MACRO relative_position_curve(baseline_run) AS TABLE
WITH curve AS MATERIALIZED (SELECT run, segment, position AS x, mean_loss FROM position_curve)
SELECT c.run, c.segment, c.x, c.mean_loss, b.mean_loss AS baseline_loss,
       c.mean_loss / b.mean_loss AS ratio, c.mean_loss - b.mean_loss AS difference
FROM curve AS c
JOIN curve AS b ON b.run = baseline_run AND b.segment = c.segment AND b.x = c.x
ORDER BY c.run, c.segment, c.x;

CREATE OR REPLACE MACRO relative_bucket_curve(baseline_run) AS TABLE
WITH curve AS MATERIALIZED (SELECT run, segment, bucket AS x, mean_loss FROM bucket_curve)
SELECT c.run, c.segment, c.x, c.mean_loss, b.mean_loss AS baseline_loss,
       c.mean_loss / b.mean_loss AS ratio, c.mean_loss - b.mean_loss AS difference
FROM curve AS c
JOIN curve AS b ON b.run = baseline_run AND b.segment = c.segment AND b.x = c.x
ORDER BY c.run, c.segment, c.x;

-- Learning curves: each point is matched to the baseline's last step at or before the same
-- number of tokens (an ASOF join), so runs with different tokens per step still line up.
CREATE OR REPLACE MACRO relative_learning_curve(baseline_run) AS TABLE
WITH curve AS MATERIALIZED (SELECT run, tokens, mean_loss FROM learning_curve),
     base AS (SELECT tokens, mean_loss FROM curve WHERE run = baseline_run)
SELECT c.run, c.tokens, c.mean_loss, b.mean_loss AS baseline_loss,
       c.mean_loss / b.mean_loss AS ratio, c.mean_loss - b.mean_loss AS difference
FROM curve AS c
ASOF JOIN base AS b ON c.tokens >= b.tokens
ORDER BY c.run, c.tokens;
