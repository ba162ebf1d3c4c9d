-- Focal-clip count per class (primary label), with taxon group; classes with no clip show 0.
-- Run: duckdb STORE/catalog.duckdb < sql/class_counts.sql
SELECT t.primary_label, t.scientific_name, t.class_name,
       count(r.filename) AS n_clips,
       count(DISTINCT r.author) AS n_authors
FROM taxonomy t
LEFT JOIN recordings r ON r.primary_label = t.primary_label
GROUP BY ALL
ORDER BY n_clips DESC, t.primary_label;
