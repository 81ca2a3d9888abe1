-- losses: the raw loss table (DESIGN.md "The loss table"), one row per trained token.
-- run and segment come from the hive folders (run=<run>/segment=<k>), typed VARCHAR / INTEGER.
CREATE OR REPLACE VIEW losses AS
SELECT step, seq, position, token_id, loss, run, segment
FROM _loss_rows;
