-- runs: one row per HOME/runs/*/run.json (the trainer's record of a run).
-- Known fields become typed columns (NULL when absent or malformed); `config` is the run's
-- resolved TOML as JSON (e.g. config ->> '$.model.n_layer'); `run_json` is the whole file.
-- A run.json that is not valid JSON (half written, hand-broken) still gives a row: run from its
-- folder name, every other column NULL.
CREATE OR REPLACE VIEW runs AS
SELECT
    coalesce(json ->> '$.run', regexp_extract(filename, '([^/]+)/run\.json$', 1)) AS run,
    json ->> '$.status' AS status,
    json ->> '$.dataset' AS dataset,
    json ->> '$.dataset_sha256' AS dataset_sha256,
    TRY_CAST(json ->> '$.seed' AS BIGINT) AS seed,
    TRY_CAST(json ->> '$.tokens_trained' AS BIGINT) AS tokens_trained,
    TRY_CAST(json ->> '$.n_params' AS BIGINT) AS n_params,
    TRY_CAST(json ->> '$.n_params_non_embedding' AS BIGINT) AS n_params_non_embedding,
    json -> '$.config' AS config,
    TRY_CAST(json ->> '$.started_at' AS TIMESTAMPTZ) AS started_at,
    TRY_CAST(json ->> '$.finished_at' AS TIMESTAMPTZ) AS finished_at,
    json AS run_json
FROM _run_json_files;
