-- Same recordist at the same place in different folds (likely one session split across folds).
-- train.csv has no recording date in this competition, so "same session" is approximated by
-- author + latitude/longitude rounded to 0.01 degree (~1 km); no day is used.
-- Needs the folds table. Expected: no rows (folds group focal clips by author + lat/lon cell).
WITH clip_fold AS (
    SELECT filename, min(fold) AS fold FROM folds WHERE source = 'train_audio' GROUP BY 1
)
SELECT r.author,
       round(r.latitude, 2) AS lat,
       round(r.longitude, 2) AS lon,
       count(*) AS n_clips,
       list(DISTINCT c.fold ORDER BY c.fold) AS folds,
       list(DISTINCT r.primary_label ORDER BY r.primary_label) AS labels
FROM recordings r JOIN clip_fold c USING (filename)
WHERE r.author IS NOT NULL AND r.latitude IS NOT NULL AND r.longitude IS NOT NULL AND c.fold >= 0
GROUP BY r.author, round(r.latitude, 2), round(r.longitude, 2)
HAVING count(DISTINCT c.fold) > 1
ORDER BY n_clips DESC, r.author;
