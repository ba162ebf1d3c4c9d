-- Audio files whose decoded PCM is identical (same sha256 of the 16-bit PCM), grouped.
SELECT sha256_pcm,
       count(*) AS n_files,
       list(path ORDER BY path) AS paths,
       round(any_value(duration_s), 2) AS duration_s
FROM audio_inventory
WHERE sha256_pcm IS NOT NULL
GROUP BY sha256_pcm
HAVING count(*) > 1
ORDER BY n_files DESC, paths;
