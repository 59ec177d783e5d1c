"""Source kind parquet:<manifest>: a raysys manifest (a Parquet file or folder of parts) read as a
table with its own column names, its real rows only."""

from __future__ import annotations

from raysys.data.sources.base import Listing, rank_classes
from raysys.data.sources.table import schema_names, table_listing


def list_parquet(location: str, d, class_names: list[str] | None) -> Listing:
    """The manifest's image bytes (or stored files), labels, class names, splits and domains."""
    from raysys.core.config import TableColumns

    cols = TableColumns(path=None, image="image", label="label", class_name="class_name", split="split",
                        domain="domain" if "domain" in schema_names(location) else None)
    return rank_classes(table_listing(location, cols, None, class_names, real_only=True))
