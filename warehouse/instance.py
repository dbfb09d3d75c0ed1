"""The Dagster instance of a warehouse: ``dagster/dagster.yaml``, written from the settings.

SQLite files under ``dagster/`` by default (nothing to set up), or a Postgres database when
``DAGSTER_POSTGRES_URL`` is set: what several machines, or many runs at once, need. The
settings file names the variable rather than its value, so no password lands on disk, and the
UI, the daemon, every run and every worker that reads the file connect to the same database.

A Postgres database holds one warehouse's instance: the study decides what to recompute from
the materializations recorded there, and another warehouse's records would make it skip work
whose files are not in this one. ``orchestrate.claim_instance`` records the warehouse that
owns the database and refuses any other.
"""

from __future__ import annotations

import os
from pathlib import Path

POSTGRES_URL_ENV = "DAGSTER_POSTGRES_URL"
OWNER_KEY = "synthdata/warehouse"


class InstanceOwnedElsewhere(RuntimeError):
    """The instance database belongs to another warehouse; the message names both."""


def use_psycopg2_driver() -> None:
    """Name the psycopg2 driver in ``DAGSTER_POSTGRES_URL`` when the URL names none, for this
    process and those it starts. SQLAlchemy 2.1 reads a bare ``postgresql://`` URL with
    psycopg 3, whose parameter binding dagster-postgres's statements do not work with
    (``NOTIFY run_events, $1`` is a syntax error); dagster-postgres is written for psycopg2."""
    url = os.environ.get(POSTGRES_URL_ENV, "")
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            os.environ[POSTGRES_URL_ENV] = "postgresql+psycopg2://" + url[len(scheme) :]


def instance_settings(accelerator_slots: int = 1, *, postgres: bool | None = None) -> str:
    """The text of ``dagster.yaml``: no telemetry (a machine with no internet should not try
    to send it); every pool, the ``accelerator`` pool of the steps that run a model, limited
    to ``accelerator_slots`` steps at once across every run of the instance (one per GPU, or
    per worker that owns its cores); and the storage (Postgres when ``postgres``, by default
    whenever ``DAGSTER_POSTGRES_URL`` is set)."""
    if postgres is None:
        postgres = bool(os.environ.get(POSTGRES_URL_ENV))
    text = (
        "# Written by synthdata from its settings (execution.accelerator_slots and\n"
        f"# {POSTGRES_URL_ENV}); change those rather than this file.\n"
        "telemetry:\n"
        "  enabled: false\n"
        "concurrency:\n"
        "  pools:\n"
        f"    default_limit: {int(accelerator_slots)}\n"
    )
    if postgres:
        text += f"storage:\n  postgres:\n    postgres_url:\n      env: {POSTGRES_URL_ENV}\n"
    return text


def write_instance_settings(dagster_home: Path, accelerator_slots: int = 1) -> Path:
    """Write a warehouse's ``dagster.yaml`` (in its ``dagster_home``) when its text changes
    (atomically: the UI and running steps may read it at any time)."""
    path = dagster_home / "dagster.yaml"
    text = instance_settings(accelerator_slots)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_text(text)
        partial.replace(path)
    return path
