"""Level-1 models on the feature store: heads, training frames, bundles, cross-validation and scores.

* :mod:`models.heads` — every head kind (one registry); :mod:`models.frame` — the training frame and
  :class:`~models.frame.FeatureVersions`; :mod:`models.bundle` — a trained head's folder;
* :mod:`models.training` — cross-validated training of one head (``python -m pipelines.train``);
* :mod:`models.tuning` — Optuna over a head's parameters; :mod:`models.metrics` — the competition metric;
* :mod:`models.experiments` — the ``experiments`` table: its one writer and its readers;
* :mod:`models.pseudo_labels` — the pseudo-label tables' reader (what a student trains on).
"""
