-- Most frequent label pairs: in the same labelled soundscape segment, and primary + secondary in
-- one focal clip. Lift = observed / expected under independence (soundscape segments only).
WITH seg AS (
    SELECT row_number() OVER () AS seg_id, list_distinct(labels) AS labels FROM soundscape_labels
),
seg_labels AS (SELECT seg_id, unnest(labels) AS label FROM seg),
n AS (SELECT count(*) AS n_segments FROM seg),
freq AS (SELECT label, count(*) AS n FROM seg_labels GROUP BY 1),
scape_pairs AS (
    SELECT 'soundscape' AS source, a.label AS label_a, b.label AS label_b, count(*) AS n_together
    FROM seg_labels a JOIN seg_labels b ON a.seg_id = b.seg_id AND a.label < b.label
    GROUP BY ALL
),
focal_pairs AS (
    SELECT 'focal' AS source, least(primary_label, s) AS label_a, greatest(primary_label, s) AS label_b,
           count(*) AS n_together
    FROM (SELECT primary_label, unnest(secondary_labels) AS s FROM recordings)
    WHERE s <> primary_label
    GROUP BY ALL
)
SELECT p.source, p.label_a, p.label_b, p.n_together,
       CASE WHEN p.source = 'soundscape'
            THEN round(p.n_together * (SELECT n_segments FROM n) / (fa.n * fb.n), 2) END AS lift
FROM (SELECT * FROM scape_pairs UNION ALL SELECT * FROM focal_pairs) p
LEFT JOIN freq fa ON fa.label = p.label_a
LEFT JOIN freq fb ON fb.label = p.label_b
ORDER BY p.n_together DESC, p.source, p.label_a, p.label_b
LIMIT 50;
