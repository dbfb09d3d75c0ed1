"""The warehouse: every artifact of a study under one root, ``SYNTHDATA_HOME``.

Parquet is the record (one file per asset partition, written atomically), DuckDB the
query layer (views over the Parquet files, so writers never block readers), and the
Dagster instance lives beside the tables so runs launched anywhere show in the UI.
"""

from warehouse.layout import Warehouse

__all__ = ["Warehouse"]
