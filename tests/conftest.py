from __future__ import annotations

from pathlib import Path

import pytest

from warehouse import Warehouse

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def warehouse(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Warehouse:
    """An empty warehouse under tmp_path, active for this process and its children."""
    monkeypatch.setenv("SYNTHDATA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home" / "dagster"))
    return Warehouse(tmp_path / "home").ensure()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests (``pytestmark = usefixtures("one_torch_thread")``):
    the tiny models gain nothing from a second thread, and OpenMP threads spin-wait when another
    process holds a core, which made such tests many times slower on a busy 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
