-- Decoded audio durations by source: a histogram (5-s bins, last bin open) plus the share of each bin.
WITH d AS (
    SELECT source, least(floor(duration_s / 5) * 5, 120) AS bin_s
    FROM audio_inventory WHERE duration_s IS NOT NULL
)
SELECT source, bin_s, CASE WHEN bin_s >= 120 THEN '>=120' ELSE printf('%d-%d', bin_s::INT, bin_s::INT + 5) END AS bin,
       count(*) AS n_files,
       round(count(*) / sum(count(*)) OVER (PARTITION BY source), 4) AS share
FROM d
GROUP BY source, bin_s
ORDER BY source, bin_s;
