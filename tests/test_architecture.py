"""The shape of the code: imports flow one way, Dagster stays in its layer, every Dagster
module has a plain twin, functions stay short, and the asset graph is the study's flow."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from synthdata_assets.config import load_config
from synthdata_assets.defs import build_definitions
from synthdata_assets.study import STAGE_INPUTS
from warehouse import Warehouse

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("synthdata_assets", "training", "warehouse")
# The modules that are Dagster's layer: the code location, the asset definitions, the run
# launcher, and the IO manager. Everything else is plain Python.
DAGSTER_LAYER = (
    "synthdata_assets.definitions",
    "synthdata_assets.defs",
    "synthdata_assets.orchestrate",
    "warehouse.io_manager",
)
# defs/ modules that bind library objects rather than run a stage: no plain twin.
NO_TWIN = {"__init__", "resources"}
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every module imported anywhere in ``path`` (lazy imports inside functions too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _internal_edges() -> dict[str, set[str]]:
    edges = {}
    for name, path in MODULES.items():
        targets = {imported for imported in _imports(path) if imported in MODULES}
        # A package's own submodules are not a cycle through it.
        edges[name] = {t for t in targets if t != name and not name.startswith(t + ".")}
    return edges


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    assert _find_cycle(_internal_edges()) is None


def test_the_cycle_finder_finds_cycles() -> None:
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b"}, "b": set()}) is None


def test_training_imports_nothing_from_the_pipeline() -> None:
    offenders = {
        name: sorted(t for t in targets if not t.startswith("training"))
        for name, targets in _internal_edges().items()
        if name.startswith("training")
    }
    assert {name: t for name, t in offenders.items() if t} == {}


def _in_dagster_layer(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in DAGSTER_LAYER)


def test_plain_modules_do_not_import_dagster() -> None:
    offenders = [
        name
        for name, path in MODULES.items()
        if not _in_dagster_layer(name)
        and any(i == "dagster" or i.startswith("dagster.") for i in _imports(path))
    ]
    assert offenders == []


def test_every_defs_module_has_a_plain_twin() -> None:
    defs = ROOT / "synthdata_assets" / "defs"
    missing = [
        path.name
        for path in sorted(defs.glob("*.py"))
        if path.stem not in NO_TWIN and not (ROOT / "synthdata_assets" / path.name).is_file()
    ]
    assert missing == []


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for folder in (*PACKAGES, "benchmarks", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    lines = node.end_lineno - node.lineno + 1
                    if lines > MAX_FUNCTION_LINES:
                        long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} {lines}")
    assert long == []


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_the_asset_graph_is_the_study_flow(preset: str, warehouse: Warehouse) -> None:
    defs = build_definitions(load_config(preset), warehouse)
    graph = {}
    for assets_def in defs.assets or []:
        for key in assets_def.keys:
            graph[key.to_user_string()] = {
                dep.to_user_string() for dep in assets_def.asset_deps[key]
            }
    # The study's flow, problems -> teacher -> models -> samples -> rollouts -> advantages
    # -> pairs -> preference models -> evaluations -> curves, as study.py declares it.
    assert graph == {stage: set(reads) for stage, reads in STAGE_INPUTS.items()}
    job = defs.resolve_job_def("study_job")
    assert isinstance(job.partitions_def, dg.MultiPartitionsDefinition)


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "benchmarks").glob("*.py")))
def test_benchmark_scripts_start(script: str) -> None:
    """Their imports still resolve after code moves (they run outside the test suite)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
