-- Identical audio: files whose decoded 16-bit PCM has the same sha256, with the labels, authors
-- and places each copy carries. label_conflict = the copies disagree on the label (a copy filed
-- under two classes); n_authors > 1 = the same clip credited to several recordists.
WITH dup AS (
    SELECT sha256_pcm FROM audio_inventory
    WHERE sha256_pcm IS NOT NULL GROUP BY 1 HAVING count(*) > 1
),
copies AS (
    SELECT a.sha256_pcm, a.path, a.source, a.duration_s, r.primary_label, r.author, r.latitude, r.longitude,
           coalesce(r.primary_label, s.label) AS label
    FROM audio_inventory a
    JOIN dup USING (sha256_pcm)
    LEFT JOIN recordings r ON a.source = 'train_audio' AND r.filename = a.filename
    LEFT JOIN (SELECT filename, string_agg(DISTINCT l, ';' ORDER BY l) AS label
               FROM (SELECT filename, unnest(labels) AS l FROM soundscape_labels) GROUP BY 1) s
           ON a.source = 'train_soundscapes' AND s.filename = a.filename
)
SELECT sha256_pcm,
       count(*) AS n_files,
       list(path ORDER BY path) AS paths,
       list(DISTINCT label ORDER BY label) FILTER (WHERE label IS NOT NULL) AS labels,
       list(DISTINCT author ORDER BY author) FILTER (WHERE author IS NOT NULL) AS authors,
       count(DISTINCT label) > 1 AS label_conflict,
       count(DISTINCT author) AS n_authors,
       count(DISTINCT source) > 1 AS crosses_sources,
       round(any_value(duration_s), 2) AS duration_s
FROM copies
GROUP BY sha256_pcm
ORDER BY n_files DESC, paths;
