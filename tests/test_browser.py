"""The Dagster UI in a real browser, on a tiny study materialized the way a user does it.

``synthdata run`` fills a temporary warehouse, ``synthdata ui`` serves it, and headless
Chromium (Debian's ``chromium``, driven by Playwright) checks what a user comes to the UI
for: the lineage of every asset, a partitioned asset's partitions, the scaling curves' plot
and multipliers, and the asset checks. Screenshots land in the warehouse's ``reports/ui/``.

Needs ``apt-get install chromium`` and ``pip install playwright`` (never ``playwright
install``: the browser is the system's); without them the tests fail, saying so.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
from processes import children, free_port, group_members

from synthdata_assets import study
from synthdata_assets.config import CONFIG_ENV, PRESET_ENV, load_config
from synthdata_assets.defs import build_definitions
from warehouse import Warehouse
from warehouse.layout import HOME_ENV

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # the browser fixture fails, naming what to install
    expect = sync_playwright = None

pytestmark = [pytest.mark.slow, pytest.mark.browser]

SYNTHDATA = Path(sys.executable).with_name("synthdata")
PRESET = "tiny"
# The tiny study with SFT alone at one size past it, so that every asset has a partition.
STUDY = {"task": {"n_train_pool": 96}, "sft_reference_sizes": [96]}
# The UI is slow on a busy 2-core machine: every wait allows this long.
UI_TIMEOUT_MS = 60_000
STOP_GRACE_S = 20
VIEWPORT = {"width": 1600, "height": 900}


def _env(home: Path) -> dict[str, str]:
    study = home.parent / "study.yaml"
    study.write_text(json.dumps(STUDY))  # JSON is YAML
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    return env | {
        HOME_ENV: str(home),
        PRESET_ENV: PRESET,
        CONFIG_ENV: str(study),
        "OMP_NUM_THREADS": "1",
    }


def _stop(ui: subprocess.Popen, groups: list[int]) -> None:
    """``SIGTERM`` to ``synthdata ui`` (it stops ``dagster dev``'s group in turn), then
    ``SIGKILL`` to whatever is left of both groups after a grace period."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ui.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        ui.wait(timeout=STOP_GRACE_S)
    deadline = time.monotonic() + STOP_GRACE_S
    while any(group_members(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.2)
    for group in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
    ui.wait()


@pytest.fixture(scope="module")
def browser() -> Iterator:
    """Headless Chromium; first, so that a missing prerequisite fails before the study runs."""
    if sync_playwright is None:
        pytest.fail(
            "the browser tests need Playwright, in the dev extra: pip install -e '.[dev]' "
            "(and no `playwright install`: they drive the system's Chromium)",
            pytrace=False,
        )
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("the browser tests need Chromium: apt-get install chromium", pytrace=False)
    expect.set_options(timeout=UI_TIMEOUT_MS)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def home(browser, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A warehouse with the tiny study materialized by ``synthdata run``."""
    home = tmp_path_factory.mktemp("browser") / "home"
    run = subprocess.run(
        [str(SYNTHDATA), "run"], env=_env(home), capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return home


@pytest.fixture(scope="module")
def ui(home: Path) -> Iterator[str]:
    """``synthdata ui`` on a free port, in its own process group; its address."""
    port = free_port()
    log = home / "reports" / "ui.log"
    with open(log, "w") as out:
        ui = subprocess.Popen(
            [str(SYNTHDATA), "ui", "--port", str(port)],
            env=_env(home),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    groups = [ui.pid]
    try:
        deadline = time.monotonic() + 180
        while True:
            assert ui.poll() is None, f"synthdata ui exited:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"the UI never answered:\n{log.read_text()[-3000:]}"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2)
                break
            except OSError:
                time.sleep(1)
        groups += children(ui.pid)  # dagster dev leads a group of its own
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(ui, groups)


@pytest.fixture
def page(browser, ui: str):
    # Twice the pixels: the lineage graph's screenshot is the README's picture of the study.
    context = browser.new_context(base_url=ui, viewport=VIEWPORT, device_scale_factor=2)
    context.set_default_timeout(UI_TIMEOUT_MS)
    # The first visit on localhost opens a newsletter dialog over the page; this is how the
    # UI remembers it was dismissed.
    context.add_init_script("window.localStorage.setItem('communityNux', '1')")
    yield context.new_page()
    context.close()


def _config():
    """The study's configuration, as the ``synthdata`` processes of :func:`_env` read it."""
    with pytest.MonkeyPatch.context() as env:
        env.delenv(CONFIG_ENV, raising=False)
        return load_config(PRESET, overrides=STUDY)


@pytest.fixture(scope="module")
def definitions(home: Path):
    return build_definitions(_config(), Warehouse(home))


def _screenshot(page, home: Path, name: str, clip: dict | None = None) -> Path:
    path = Warehouse(home).reports / "ui" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=path, clip=clip)
    return path


# The nodes and group boxes of the lineage graph, as one box on the page.
_DRAWING_BOX = """svg => {
    const rects = [...svg.querySelectorAll("foreignObject")].map(f => f.getBoundingClientRect());
    const left = Math.min(...rects.map(r => r.left)), top = Math.min(...rects.map(r => r.top));
    const right = Math.max(...rects.map(r => r.right));
    const bottom = Math.max(...rects.map(r => r.bottom));
    return {x: left, y: top, width: right - left, height: bottom - top};
}"""


def _fit_graph(page) -> dict:
    """Zoom and pan the lineage graph until all of it fills the view below the toolbar (the
    UI fits the graph's width only, and draws only the nodes in view); the drawing's box with
    a margin, to clip a screenshot to."""
    graph = page.locator("[data-svg-viewport] svg").first
    view = page.locator("[data-svg-viewport]").bounding_box()
    toolbar = page.get_by_role("button", name=re.compile("Materialize all")).bounding_box()
    top = toolbar["y"] + toolbar["height"] + 8  # below the toolbar's border
    area = {
        "x": view["x"],
        "y": top,
        "width": view["width"],
        "height": view["y"] + view["height"] - top,
    }
    center = (area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)

    def fits(box: dict, margin: float) -> bool:
        return box["width"] <= area["width"] - margin and box["height"] <= area["height"] - margin

    def zoom(delta: float) -> None:
        page.keyboard.down("Control")
        page.mouse.wheel(0, delta)
        page.keyboard.up("Control")
        page.wait_for_timeout(50)

    def center_on(box_of) -> None:  # the wheel pans by a fraction of its delta: close in
        for _ in range(30):
            box = box_of()
            dx = center[0] - (box["x"] + box["width"] / 2)
            dy = center[1] - (box["y"] + box["height"] / 2)
            if abs(dx) < 1 and abs(dy) < 1:
                return
            page.mouse.wheel(-dx, -dy)
            page.wait_for_timeout(50)

    page.mouse.move(*center)
    for _ in range(100):  # out, until the whole drawing is in view
        if fits(graph.bounding_box(), 0):
            break
        zoom(40)
    center_on(graph.bounding_box)
    for _ in range(100):  # in, until the nodes and groups fill the view
        zoom(-10)
        center_on(lambda: graph.evaluate(_DRAWING_BOX))
        if not fits(graph.evaluate(_DRAWING_BOX), 48):
            zoom(10)
            break
    center_on(lambda: graph.evaluate(_DRAWING_BOX))
    drawing = graph.evaluate(_DRAWING_BOX)
    margin = 16
    assert fits(drawing, 2 * margin), "the graph never fit the page"
    return {
        "x": drawing["x"] - margin,
        "y": drawing["y"] - margin,
        "width": drawing["width"] + 2 * margin,
        "height": drawing["height"] + 2 * margin,
    }


def test_the_lineage_graph_shows_every_asset_and_edge(page, home: Path, definitions) -> None:
    specs = definitions.resolve_all_asset_specs()
    edges = {(dep.asset_key, spec.key) for spec in specs for dep in spec.deps}
    page.add_init_script("window.localStorage.setItem('asset-graph-direction', '\"vertical\"')")
    page.goto("/asset-groups")
    expect(page.get_by_text("Global asset lineage")).to_be_visible()
    page.get_by_role("button", name="Hide navigation").click()
    # The sidebar's toggle has an icon and no text.
    page.get_by_role("button").filter(has=page.get_by_role("img", name="panel_show_right")).click()
    page.keyboard.press("Alt+e")  # the graph's shortcut for "Expand all groups"
    expect(page).to_have_url(re.compile(r"expanded="))
    clip = _fit_graph(page)
    graph = page.locator("[data-svg-viewport]")
    for spec in specs:
        expect(graph.get_by_text(spec.key.to_user_string(), exact=True)).to_be_visible()
    # One arrow per dependency (the arrowheads' own paths have none).
    expect(graph.locator("path[marker-end]")).to_have_count(len(edges))
    # Zoomed out, a node's colors are its status: green once materialized, grey while unknown.
    materialized = graph.locator('[style*="--minimal-bg: var(--color-background-green)"]')
    expect(materialized).to_have_count(len(specs))
    assert _screenshot(page, home, "asset-graph", clip=clip).is_file()


def test_each_asset_page_names_its_upstream_assets(page, definitions) -> None:
    for spec in definitions.resolve_all_asset_specs():
        name = spec.key.to_user_string()
        upstream = sorted(f"/assets/{dep.asset_key.to_user_string()}" for dep in spec.deps)
        page.goto(f"/assets/{name}")
        section = page.get_by_text("Upstream assets", exact=True).locator("..")
        links = section.get_by_role("link")
        expect(links).to_have_count(len(upstream))
        assert sorted(link.get_attribute("href") for link in links.all()) == upstream, name


def test_a_partitioned_asset_lists_its_partitions(page, home: Path) -> None:
    keys = study.partition_keys(_config())
    page.goto("/assets/sft_model?view=partitions")
    expect(page.get_by_text(f"Materialized ({len(keys)})", exact=True)).to_be_visible()
    for dimension in (study.DATA_SIZE, study.SEED):
        expect(page.get_by_placeholder(f"Filter by {dimension}")).to_be_visible()
    for key in keys:
        page.goto(f"/assets/sft_model?view=partitions&partition={key}")
        expect(page.get_by_text(key, exact=True).first).to_be_visible()
        expect(page.get_by_text(re.compile(r"^View all historical events \([1-9]"))).to_be_visible()
    assert _screenshot(page, home, "partitions").is_file()


def test_scaling_curves_shows_its_plot_and_multipliers(page, home: Path) -> None:
    page.goto("/assets/scaling_curves")
    metadata = page.get_by_role("row")
    metadata.filter(has=page.get_by_text("plot", exact=True)).get_by_text("Show Markdown").click()
    plot = page.get_by_role("dialog").get_by_role("img", name="scaling curves")
    expect(plot).to_be_visible()
    assert plot.evaluate("img => img.complete && img.naturalWidth > 0"), "the plot did not load"
    assert _screenshot(page, home, "scaling-curves").is_file()
    page.get_by_role("button", name="Close").click()

    metadata.filter(has=page.get_by_text("report", exact=True)).get_by_text("Show Markdown").click()
    multipliers = (
        page.get_by_role("dialog")
        .get_by_role("table")
        .filter(has=page.get_by_role("columnheader", name="multiplier"))
    )
    methods = pl.read_parquet(Warehouse(home).table_file("scaling_curves"))["method"]
    rows = multipliers.get_by_role("row")
    expect(rows).to_have_count(1 + methods.n_unique())
    listed = [row.get_by_role("cell").first.inner_text() for row in rows.all()[1:]]
    assert sorted(listed) == sorted(methods.unique())
    reference = rows.filter(has=page.get_by_role("cell", name="sft", exact=True))
    expect(reference).to_contain_text("1x (ref)")
    multipliers.scroll_into_view_if_needed()
    assert _screenshot(page, home, "multipliers").is_file()
    page.get_by_role("button", name="Close").click()
    # The multipliers as metadata entries too (none where no method's is defined, as in the
    # tiny study, whose models all stay at chance).
    with dg.DagsterInstance.from_config(str(Warehouse(home).dagster_home)) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey("scaling_curves"))
    for key in event.asset_materialization.metadata:
        if key.startswith("multiplier_"):
            expect(metadata.filter(has=page.get_by_text(key, exact=True))).to_be_visible()


def test_the_checks_of_problems_show_that_they_passed(page, home: Path, definitions) -> None:
    graph = definitions.resolve_asset_graph()
    checks = sorted(k.name for k in graph.asset_check_keys if k.asset_key.path == ["problems"])
    assert checks
    page.goto("/assets/problems?view=checks")
    expect(page.get_by_text(f"Checks ({len(checks)})", exact=True)).to_be_visible()
    for name in checks:
        expect(page.get_by_title(name, exact=True)).to_be_visible()
    expect(page.get_by_text("Succeeded", exact=True)).to_have_count(len(checks))
    for name in checks:
        page.goto(f"/assets/problems?view=checks&checkDetail={name}")
        result = page.get_by_text("Evaluation result", exact=True).locator("..")
        expect(result).to_contain_text("Passed")
    assert _screenshot(page, home, "checks").is_file()
