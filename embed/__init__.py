"""Embed once, reuse everywhere: frozen audio models and classical features into the feature store.

* :mod:`embed.audio` — decode, mono mix, polyphase resampling, the frame grid inside 5-s windows;
* :mod:`embed.extractors` — the contract every extractor family fulfils (outputs, version, views,
  part table, side tables); :mod:`embed.registry` — the one list of families, their presets, view
  parsing, building from the job's options and rebuilding from stored params;
* :mod:`embed.birdnet` — BirdNET V2.4 (TFLite, ai-edge-litert) embedding + matched logits;
* :mod:`embed.classical` — log-mel / PCEN / MFCC / spectral statistics per window (numpy + scipy);
* :mod:`embed.custom` — user-supplied TFLite or ONNX models from a small config;
* :mod:`embed.perch` — Perch v2 in its three forms (SavedModel folder, ONNX, TFLite) behind one runner
  interface; :mod:`embed.perch_map` — its 14,795 labels mapped to the taxonomy (exact, genus proxy, none);
* :mod:`embed.features` — read pooled window features back (:func:`load_window_features`) or embed
  one file in memory (:func:`embed_file`) — the API for training and the Kaggle notebook;
* :mod:`embed.job` — the resumable, sharded, multi-process job behind ``python -m pipelines.embed``;
* :mod:`embed.near_duplicates` — near-duplicate recordings by cosine of per-file BirdNET embeddings.
"""
