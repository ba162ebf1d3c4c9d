"""Inference and the Kaggle submission: any trained head, single or stacked, on new audio.

* :mod:`submit.predict` — :func:`~submit.predict.open_predictor` and the :class:`~submit.predict.Predictor`
  protocol; predict a folder of audio into a validated submission (``python -m pipelines.predict``);
* :mod:`submit.head_predictor` / :mod:`submit.stack_predictor` — one head bundle / a stacked head on a file;
* :mod:`submit.submission` — the expected rows of a soundscape, writing and validating a submission;
* :mod:`submit.runtime`, :mod:`submit.export`, :mod:`submit.notebook`, :mod:`submit.plan`,
  :mod:`submit.dryrun` — the Kaggle bundle: what runs in the notebook, how it is built, timed and rehearsed.

Nothing here imports duckdb, pyarrow or tensorflow on the notebook's path (``submit.runtime`` and below).
"""
