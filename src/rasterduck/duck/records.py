"""Collection rows (the `r` of `FROM collection r`) as they reach a UDF: an Arrow StructArray per chunk.

The logic is engine-neutral and lives in core/kernel.py (Spark uses it too); these names stay importable
from here for the DuckDB surface.
"""

from __future__ import annotations

from ..core.kernel import METADATA_SUFFIX, ChunkRecords, MetadataCache, combine

__all__ = ["METADATA_SUFFIX", "ChunkRecords", "MetadataCache", "combine"]
