-- Expert labels per soundscape site and hour of day (UTC from the file name): files, labelled
-- segments, label events and distinct classes.
SELECT site, hour,
       count(DISTINCT filename) AS n_files,
       count(*) AS n_segments,
       CAST(sum(len(labels)) AS BIGINT) AS n_label_events,
       len(list_distinct(flatten(list(labels)))) AS n_distinct_labels
FROM soundscape_labels
GROUP BY site, hour
ORDER BY site, hour;
