-- Identical audio (same PCM sha256) whose copies sit in different cross-validation folds: a direct
-- train/validation leak. Needs the folds table (python -m pipelines.folds). Expected: no rows.
WITH file_folds AS (
    SELECT source || '/' || filename AS path, min(fold) AS fold FROM folds GROUP BY ALL
)
SELECT a.sha256_pcm,
       list(a.path ORDER BY a.path) AS paths,
       list(DISTINCT f.fold ORDER BY f.fold) AS folds
FROM audio_inventory a JOIN file_folds f USING (path)
WHERE a.sha256_pcm IS NOT NULL AND f.fold >= 0
GROUP BY a.sha256_pcm
HAVING count(DISTINCT f.fold) > 1
ORDER BY paths;
