-- vocab: every data set's vocabulary (HOME/data/<dataset>/vocab.parquet), with its dataset name.
CREATE OR REPLACE VIEW vocab AS
SELECT
    regexp_extract(filename, '([^/]+)/vocab\.parquet$', 1) AS dataset,
    * EXCLUDE (filename) REPLACE (
        CAST(token_id AS INTEGER) AS token_id,
        CAST(bucket AS INTEGER) AS bucket,
        CAST(is_word_start AS BOOLEAN) AS is_word_start
    )
FROM _vocab_files;
