"""Every resource the assets use, bound to one warehouse."""

from __future__ import annotations

from typing import Any

from warehouse import Warehouse
from warehouse.io_manager import ParquetIOManager


def resources(warehouse: Warehouse) -> dict[str, Any]:
    return {"io_manager": ParquetIOManager(base_path=str(warehouse.tables))}
