-- Per fold: groups, files, windows (labelled / with audio), classes covered and the soundscape
-- sites it holds. Fold -1 = test soundscapes (never cross-validated). Needs the folds table.
WITH window_labels AS (
    SELECT 'train_soundscapes/' || filename || '@' || CAST(round(start_s) AS INTEGER) AS window_id,
           unnest(labels) AS label
    FROM soundscape_labels
    UNION ALL
    SELECT w.window_id, unnest(list_distinct(list_prepend(r.primary_label, coalesce(r.secondary_labels, []))))
    FROM windows w JOIN recordings r ON w.source = 'train_audio' AND w.filename = r.filename
),
per_fold AS (
    SELECT fold, count(DISTINCT family || ':' || group_key) AS n_groups, count(DISTINCT filename) AS n_files,
           count(*) AS n_windows, count(*) FILTER (WHERE has_labels) AS n_labelled,
           count(*) FILTER (WHERE in_windows) AS n_with_audio,
           count(*) FILTER (WHERE family = 'soundscape') AS n_soundscape_windows,
           list(DISTINCT group_key ORDER BY group_key) FILTER (WHERE family = 'soundscape') AS soundscape_groups
    FROM folds GROUP BY fold
),
classes AS (
    SELECT f.fold, count(DISTINCT wl.label) AS n_classes
    FROM window_labels wl JOIN folds f USING (window_id) GROUP BY f.fold
)
SELECT p.*, coalesce(c.n_classes, 0) AS n_classes, any_value(f.fold_version) AS fold_version
FROM per_fold p LEFT JOIN classes c USING (fold) JOIN folds f USING (fold)
GROUP BY ALL
ORDER BY p.fold;
