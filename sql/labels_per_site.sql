-- Expert-labelled 5-s segments per soundscape site: files, segments, distinct labels, label events.
SELECT site,
       count(DISTINCT filename) AS n_files,
       count(*) AS n_segments,
       len(list_distinct(flatten(list(labels)))) AS n_distinct_labels,
       sum(len(labels)) AS n_label_events
FROM soundscape_labels
GROUP BY site
ORDER BY n_files DESC, site;
