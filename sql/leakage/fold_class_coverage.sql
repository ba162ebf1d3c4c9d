-- Per class: in how many folds it has positives versus how many its group count allows, and the
-- smallest number of positive files in any fold (0 when a fold lacks the class). Rarest first.
-- cannot_validate = the class lives in a single group, so it can never be both trained and
-- validated. Needs the folds table.
WITH window_labels AS (
    SELECT 'train_soundscapes/' || filename || '@' || CAST(round(start_s) AS INTEGER) AS window_id,
           unnest(labels) AS label
    FROM soundscape_labels
    UNION ALL
    SELECT w.window_id, unnest(list_distinct(list_prepend(r.primary_label, coalesce(r.secondary_labels, []))))
    FROM windows w JOIN recordings r ON w.source = 'train_audio' AND w.filename = r.filename
),
k AS (SELECT count(DISTINCT fold) AS n_folds FROM folds WHERE fold >= 0),
pos AS (
    SELECT wl.label, f.fold, f.family, f.group_key, f.filename
    FROM window_labels wl JOIN folds f USING (window_id) WHERE f.fold >= 0
),
per_class_fold AS (SELECT label, fold, count(DISTINCT filename) AS n_files FROM pos GROUP BY ALL),
per_class AS (
    SELECT label, count(DISTINCT family || ':' || group_key) AS n_groups, count(DISTINCT fold) AS n_folds,
           count(DISTINCT filename) AS n_files
    FROM pos GROUP BY 1
)
SELECT t.primary_label, t.class_name,
       coalesce(c.n_files, 0) AS n_files,
       coalesce(c.n_groups, 0) AS n_groups,
       coalesce(c.n_folds, 0) AS n_folds,
       least(coalesce(c.n_groups, 0), k.n_folds) AS n_folds_possible,
       CASE WHEN coalesce(c.n_folds, 0) < k.n_folds THEN 0
            ELSE (SELECT min(n_files) FROM per_class_fold p WHERE p.label = t.primary_label) END
           AS min_files_per_fold,
       coalesce(c.n_groups, 0) = 1 AS cannot_validate
FROM taxonomy t CROSS JOIN k LEFT JOIN per_class c ON c.label = t.primary_label
ORDER BY n_files = 0, n_folds, n_files, t.primary_label;
