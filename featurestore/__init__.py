"""DuckDB + Parquet feature store and competition ingest for birdclef-stack."""

from featurestore.store import FeatureStore, StoreError, TableVersion

__all__ = ["FeatureStore", "StoreError", "TableVersion"]
