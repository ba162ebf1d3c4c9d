-- train.csv metadata (recordings): missing values and exact distinct count per column.
WITH r AS (SELECT * EXCLUDE (source_file, ingest_version, ingested_at) FROM recordings),
present AS (
    UNPIVOT (SELECT count(COLUMNS(*)) FROM r) ON COLUMNS(*) INTO NAME column_name VALUE n_present
),
distinct_values AS (
    UNPIVOT (SELECT count(DISTINCT COLUMNS(*)) FROM r) ON COLUMNS(*) INTO NAME column_name VALUE n_distinct
),
total AS (SELECT count(*) AS n_rows FROM r)
SELECT p.column_name, t.n_rows, t.n_rows - p.n_present AS n_missing,
       round((t.n_rows - p.n_present) / greatest(t.n_rows, 1), 4) AS missing_share,
       d.n_distinct
FROM present p JOIN distinct_values d USING (column_name), total t
ORDER BY missing_share DESC, p.column_name;
