"""The Dagster code location: the study named by SYNTHDATA_PRESET / SYNTHDATA_CONFIG, over
the warehouse of SYNTHDATA_HOME. Importing it writes nothing: the UI's code server, the
daemon and every worker import it, and a worker on a machine without the warehouse must not
make an empty one (its steps fail instead, see ``Warehouse.require``)."""

from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from warehouse import Warehouse

defs = build_definitions(load_config(), Warehouse.from_env())
