-- Soundscape windows whose file also feeds training features for the fold that validates them:
--   file_in_several_folds  windows of one soundscape file in different folds (its other windows
--                          would train the model that scores it);
--   audio_also_in_<source> a soundscape whose decoded audio also exists as another file (a test
--                          soundscape that is a train file, a train soundscape copied as a clip);
--   site_in_several_folds  a site split across folds although its groups are whole sites (a site cut
--                          on purpose into date blocks - site_split or site_date grouping, group keys
--                          with '|days:' or '|block:' - is not reported).
-- Needs the folds table. Expected: no rows.
WITH split_files AS (
    SELECT 'file_in_several_folds' AS kind, source || '/' || filename AS file, count(*) AS n_windows,
           CAST(list(DISTINCT fold ORDER BY fold) AS VARCHAR) AS detail
    FROM folds WHERE source IN ('train_soundscapes', 'test_soundscapes')
    GROUP BY source, filename HAVING count(DISTINCT fold) > 1
),
same_audio AS (
    SELECT 'audio_also_in_' || b.source AS kind, a.path AS file, NULL::BIGINT AS n_windows, b.path AS detail
    FROM audio_inventory a
    JOIN audio_inventory b ON a.sha256_pcm = b.sha256_pcm AND a.path <> b.path
    WHERE a.source IN ('train_soundscapes', 'test_soundscapes')
),
site_split AS (
    SELECT 'site_in_several_folds' AS kind, 'site ' || l.site AS file, count(*) AS n_windows,
           CAST(list(DISTINCT f.fold ORDER BY f.fold) AS VARCHAR) AS detail
    FROM folds f
    JOIN (SELECT DISTINCT filename, site FROM soundscape_labels) l USING (filename)
    WHERE f.source = 'train_soundscapes'
    GROUP BY l.site HAVING count(DISTINCT f.fold) > 1
       AND NOT bool_or(f.group_key LIKE '%|days:%' OR f.group_key LIKE '%|block:%')
)
SELECT * FROM split_files
UNION ALL SELECT * FROM same_audio
UNION ALL SELECT * FROM site_split
ORDER BY kind, file;
