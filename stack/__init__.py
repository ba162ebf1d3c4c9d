"""The stack: level-2 models over the base heads' OOF predictions, and post-processing.

* :mod:`stack.inputs` — align heads' OOF tables (and zero-shot logits) by window; level-2 features;
  site/hour priors learnt inside training folds; head diversity.
* :mod:`stack.stackers` — ridge and blend stackers, honest level-2 cross-validation scored like a head.
* :mod:`stack.post` — named, ordered post-processing ops (smoothing, file top-k scaling, power, temperature).
* :mod:`stack.bundle` — the stacked head's folder (one writer, one reader; no store needed to load it),
  and :func:`~stack.bundle.open_head`: any trained head of a store, single or stacked.
* :mod:`stack.run` — :func:`run_stack`: level-2 CV, the stacked bundle, its OOF table and experiments row.
* :mod:`stack.tuning` — Optuna over a stacker's and its post steps' parameters (``pipelines.stack --trials``).
* :mod:`stack.apply` — a stacked head's level-2 model and post steps on its base heads' outputs.
"""

from __future__ import annotations


def __getattr__(name: str):
    # lazy: ``import stack.bundle`` (the inference path) must not pull in the store (pyarrow, duckdb)
    if name == "run_stack":
        from stack.run import run_stack

        return run_stack
    if name == "tune_stack":
        from stack.tuning import tune_stack

        return tune_stack
    raise AttributeError(f"module 'stack' has no attribute {name!r}")
