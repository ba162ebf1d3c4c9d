-- Recording quality rating (0 = unrated in iNat/XC exports, 1..5 stars) by collection.
WITH r AS (SELECT coalesce(collection, '(none)') AS collection, rating FROM recordings)
SELECT collection, rating,
       count(*) AS n_clips,
       round(count(*) / sum(count(*)) OVER (PARTITION BY collection), 4) AS share
FROM r
GROUP BY collection, rating
ORDER BY collection, rating NULLS LAST;
