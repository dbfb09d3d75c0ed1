"""The Dagster code location: the study named by SYNTHDATA_PRESET / SYNTHDATA_CONFIG."""

from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from warehouse import Warehouse

defs = build_definitions(load_config(), Warehouse.from_env().ensure())
