-- The long tail: every taxonomy class with its focal clips, soundscape label events, rank and
-- cumulative share of focal clips; frequency bucket rare (< 10 clips) / mid (< 100) / head.
WITH focal AS (
    SELECT primary_label AS label, count(*) AS n_clips, count(DISTINCT author) AS n_authors
    FROM recordings GROUP BY 1
),
secondary AS (
    SELECT unnest(secondary_labels) AS label, count(*) AS n_secondary FROM recordings GROUP BY 1
),
scape AS (
    SELECT label, count(*) AS n_segments, count(DISTINCT filename) AS n_soundscapes, count(DISTINCT site) AS n_sites
    FROM (SELECT filename, site, unnest(labels) AS label FROM soundscape_labels) GROUP BY 1
),
joined AS (
    SELECT t.primary_label, t.class_name, t.scientific_name,
           coalesce(f.n_clips, 0) AS n_clips, coalesce(f.n_authors, 0) AS n_authors,
           coalesce(s2.n_secondary, 0) AS n_secondary,
           coalesce(s.n_segments, 0) AS n_soundscape_segments, coalesce(s.n_sites, 0) AS n_sites
    FROM taxonomy t
    LEFT JOIN focal f ON f.label = t.primary_label
    LEFT JOIN secondary s2 ON s2.label = t.primary_label
    LEFT JOIN scape s ON s.label = t.primary_label
)
SELECT *,
       row_number() OVER (ORDER BY n_clips DESC, primary_label) AS rank,
       round(sum(n_clips) OVER (ORDER BY n_clips DESC, primary_label) / greatest(1, sum(n_clips) OVER ()), 4)
           AS cumulative_share,
       CASE WHEN n_clips < 10 THEN 'rare' WHEN n_clips < 100 THEN 'mid' ELSE 'head' END AS bucket,
       n_clips = 0 AND n_soundscape_segments = 0 AS no_training_data
FROM joined
ORDER BY rank;
