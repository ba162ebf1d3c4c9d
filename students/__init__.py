"""Teacher -> student training: a trained head or stack labels data that a new model learns from.

* :mod:`students.pseudo` — the labelling job behind ``python -m pipelines.pseudo`` (fold-consistent soft
  labels of the unlabelled soundscapes, written to the tables :mod:`models.pseudo_labels` reads);
* :mod:`students.selftrain` — rounds of pseudo-labels and students (``python -m pipelines.selftrain``);
* :mod:`students.distill` — a student on cheaper features from a teacher's soft labels (``pipelines.distill``);
* :mod:`students.cnn` — the spectrogram CNN student distilled from stored embeddings (``pipelines.cnn``).
"""
