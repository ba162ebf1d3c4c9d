"""DuckDB + Parquet feature store and competition ingest for birdclef-stack.

Nothing is imported eagerly: ``featurestore.errors``, ``featurestore.windows`` and ``featurestore.files``
serve the inference path, which must not load duckdb unless it reads a store.
"""

from __future__ import annotations

__all__ = ["FeatureStore", "StoreError", "TableVersion"]


def __getattr__(name: str):
    if name in ("FeatureStore", "TableVersion"):
        from featurestore import store
        return getattr(store, name)
    if name == "StoreError":
        from featurestore.errors import StoreError
        return StoreError
    raise AttributeError(f"module 'featurestore' has no attribute {name!r}")
