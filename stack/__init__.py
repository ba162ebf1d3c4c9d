"""The stack: level-2 models over the base heads' OOF predictions, and post-processing.

* :mod:`stack.inputs` — align heads' OOF tables (and zero-shot logits) by window; level-2 features;
  site/hour priors learnt inside training folds; head diversity.
* :mod:`stack.stackers` — ridge and blend stackers, honest level-2 cross-validation scored like a head.
* :mod:`stack.post` — named, ordered post-processing ops (smoothing, file top-k scaling, power, temperature).
"""
