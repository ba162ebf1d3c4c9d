-- Focal clips and labelled soundscape segments per taxon group (class_name) and collection.
-- Run: duckdb STORE/catalog.duckdb < sql/eda/class_counts.sql
WITH focal AS (
    SELECT t.class_name, coalesce(r.collection, '(none)') AS collection,
           count(*) AS n_clips, count(DISTINCT r.primary_label) AS n_classes,
           count(DISTINCT r.author) AS n_authors
    FROM recordings r JOIN taxonomy t ON t.primary_label = r.primary_label
    GROUP BY ALL
),
scape AS (
    SELECT t.class_name, 'soundscape' AS collection,
           count(*) AS n_clips, count(DISTINCT t.primary_label) AS n_classes, NULL::BIGINT AS n_authors
    FROM (SELECT unnest(labels) AS label FROM soundscape_labels) s
    JOIN taxonomy t ON t.primary_label = s.label
    GROUP BY ALL
),
taxa AS (SELECT class_name, count(*) AS n_taxonomy_classes FROM taxonomy GROUP BY 1)
SELECT c.class_name, c.collection, c.n_clips, c.n_classes, x.n_taxonomy_classes, c.n_authors
FROM (SELECT * FROM focal UNION ALL SELECT * FROM scape) c
JOIN taxa x USING (class_name)
ORDER BY c.class_name, c.collection;
