"""``synthdata``: the project's command line.

::

    synthdata run [--force]        the whole study: new partitions, then the scaling curves
    synthdata sql "SELECT ..."     query the warehouse, read-only (@name: warehouse/sql/name.sql)
    synthdata grade FILE.jsonl     grade model outputs against gold answers
    synthdata config               print the resolved configuration
    synthdata synthesize SEEDS OUT new problems in the style of SEEDS, from a served model
    synthdata ui                   open the Dagster UI on the warehouse's instance
    synthdata run --workers N      the same, N partitions at a time on N local Celery workers
    synthdata worker               serve the steps of runs from the Celery broker

The preset comes from ``SYNTHDATA_PRESET`` (default ``demo``), overrides from the YAML
file named by ``SYNTHDATA_CONFIG``, and the warehouse root from ``SYNTHDATA_HOME``.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from synthdata_assets.config import ConfigError, load_config
from warehouse import Warehouse
from warehouse.parquet import write_text_atomic

REPO_ROOT = Path(__file__).resolve().parents[1]


def _print_table(columns: list[str], rows: list[tuple], out: TextIO) -> None:
    cells = [[("" if v is None else str(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out.write(line.rstrip() + "\n" + "  ".join("-" * w for w in widths) + "\n")
    for r in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")
    out.write(f"({len(rows)} row{'s' if len(rows) != 1 else ''})\n")


def _emit(columns: list[str], rows: list[tuple], fmt: str, out: TextIO) -> None:
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow(columns)
        writer.writerows(rows)
    elif fmt == "json":
        records = [dict(zip(columns, row, strict=True)) for row in rows]
        out.write(json.dumps(records, indent=2, default=str) + "\n")
    else:
        _print_table(columns, rows, out)


def cmd_sql(args: argparse.Namespace) -> int:
    from warehouse.query import QueryError, run_query

    # The study's partitions: a data size removed from the configuration is out of the views.
    config = load_config()
    partitions = config.partition_keys + config.reference_keys
    warehouse = Warehouse.from_env()
    try:
        result = run_query(args.query, warehouse, partitions)
    except QueryError as exc:
        print(f"synthdata sql: {exc}", file=sys.stderr)
        return 2
    _emit(result.columns, result.rows, args.format, sys.stdout)
    left_out = _partitions_left_out(warehouse, partitions, config.preset)
    if left_out:
        print(left_out, file=sys.stderr)
    return 0


def _partitions_left_out(
    warehouse: Warehouse, partitions: list[tuple[int, int]], preset: str
) -> str | None:
    """A line for stderr when the warehouse holds partitions the configuration's views leave
    out (a warehouse made under another configuration, or a size since removed)."""
    from warehouse.query import stored_partitions

    others = sorted(stored_partitions(warehouse) - set(partitions))
    if not others:
        return None
    shown = ", ".join(f"{size}|{seed}" for size, seed in others[:8])
    more = f" and {len(others) - 8} more" if len(others) > 8 else ""
    return (
        f"synthdata sql: the views hold this configuration's partitions (preset {preset}); "
        f"{len(others)} more on disk are left out ({shown}{more}): query `<table>_all`, or set "
        "SYNTHDATA_PRESET or SYNTHDATA_CONFIG to the configuration they were made under"
    )


def _read_grade_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    from synthdata_assets.tasks.realdata import DataFormatError, iter_jsonl

    for line_no, row in iter_jsonl(path):
        for field in ("completion", "answer"):
            if field not in row:
                raise DataFormatError(str(path), line_no, f"missing field {field!r}")
        if row["completion"] is not None and not isinstance(row["completion"], str):
            raise DataFormatError(str(path), line_no, "field 'completion' must be a string")
        yield line_no, row


def cmd_grade(args: argparse.Namespace) -> int:
    from synthdata_assets.tasks.realdata import DataFormatError
    from synthdata_assets.verify import FORMATS, grade, infer_format

    path = Path(args.file)
    if not path.is_file():
        print(f"synthdata grade: no such file {str(path)!r}", file=sys.stderr)
        return 2
    if args.output and not Path(args.output).parent.is_dir():
        print(
            f"synthdata grade: -o {args.output}: no folder {str(Path(args.output).parent)!r}; "
            "create it first",
            file=sys.stderr,
        )
        return 2
    try:
        rows = list(_read_grade_rows(path))
    except DataFormatError as exc:
        print(f"synthdata grade: {exc}", file=sys.stderr)
        return 2
    if not rows:
        print(f"synthdata grade: {path} holds no rows to grade", file=sys.stderr)
        return 2
    graded = []
    for line_no, row in rows:
        completion = row["completion"] or ""
        gold = str(row["answer"])
        fmt = args.answer_format or row.get("format") or infer_format(completion, gold)
        if fmt not in FORMATS:
            print(
                f"synthdata grade: {path}:{line_no}: format {fmt!r} is not one of "
                f"{', '.join(FORMATS)}",
                file=sys.stderr,
            )
            return 2
        result = grade(completion, gold, fmt)
        graded.append({**row, "extracted": result.extracted, "is_correct": result.is_correct})
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in graded)
    if args.output:
        write_text_atomic(Path(args.output), text)
    else:
        sys.stdout.write(text)
    correct = sum(r["is_correct"] for r in graded)
    accuracy = correct / len(graded)
    print(f"accuracy {accuracy:.4f} ({correct}/{len(graded)})", file=sys.stderr)
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = load_config()
    print(json.dumps(config.model_dump(mode="json"), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from synthdata_assets.config import BROKER_ENV, LOCAL_BROKER
    from synthdata_assets.orchestrate import claim_instance, recover_dead_runs, stop_on_sigterm
    from synthdata_assets.preflight import check_data, check_devices, usable_warehouse
    from synthdata_assets.workers import BrokerUnreachable, check_broker, threads_per_process
    from training.folders import remove_partial_checkpoints
    from warehouse.instance import InstanceOwnedElsewhere, write_instance_settings
    from warehouse.lock import WarehouseBusy, WarehouseLock

    stop_on_sigterm()
    config = load_config()
    broker = config.execution.broker
    if args.workers:
        broker = broker or LOCAL_BROKER
        # The runs' code locations read the broker from here (config.load_config).
        os.environ[BROKER_ENV] = broker
        config = load_config()
    # Without a broker, each run runs its own steps: parallel_runs of them at once.
    local_runs = 1 if broker else config.execution.parallel_runs
    slots = config.execution.accelerator_slots or args.workers or local_runs
    warehouse = usable_warehouse()
    check_data(config)
    check_devices(config)
    try:
        if broker:
            check_broker(broker)
    except BrokerUnreachable as exc:
        print(f"synthdata run: {exc}", file=sys.stderr)
        return 2
    lock = WarehouseLock(warehouse.root)
    try:
        lock.acquire(wait=args.wait)
    except WarehouseBusy as exc:
        print(f"synthdata run: {exc}", file=sys.stderr)
        return 2
    workers = None
    try:
        write_instance_settings(warehouse.dagster_home, slots)
        claim_instance(warehouse)
        dead = recover_dead_runs(warehouse)
        if dead:
            print(f"marked {len(dead)} run(s) of a killed launcher as failed: {', '.join(dead)}")
        for leftover in remove_partial_checkpoints(warehouse.checkpoints):
            print(f"removed {leftover}, a checkpoint a killed run left half-written")
        if args.workers:
            from synthdata_assets.workers import LocalWorkers

            workers = LocalWorkers.start(
                args.workers,
                broker=str(broker),
                threads=args.threads,
                process_per_step=config.execution.process_per_stage,
                logs=warehouse.reports / "logs" / "workers",
                lock_fd=lock.fd,
            )
            print(workers.describe())
        parallel = slots if broker else local_runs
        threads = None
        if not broker and (local_runs > 1 or args.threads):
            # --threads applies to one run at a time as well; without it one run keeps torch's
            # own default (every core).
            threads = threads_per_process(local_runs, args.threads)
        return _run_study(config, warehouse, args.force, lock.fd, parallel, workers, threads)
    except InstanceOwnedElsewhere as exc:
        print(f"synthdata run: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        return _stopped("run", exc, "; the next run resumes")
    finally:
        if workers is not None:
            workers.stop()
        lock.release()


def cmd_worker(args: argparse.Namespace) -> int:
    from synthdata_assets.config import LOCAL_BROKER
    from synthdata_assets.workers import BrokerUnreachable, run_worker
    from warehouse.instance import use_psycopg2_driver
    from warehouse.layout import WarehouseMissing

    config = load_config()  # fail here, with the field named, rather than at the first step
    broker = args.broker or config.execution.broker or LOCAL_BROKER
    warehouse = Warehouse.from_env()
    try:
        warehouse.require()
    except WarehouseMissing as exc:
        print(f"synthdata worker: {exc}", file=sys.stderr)
        return 2
    os.environ["DAGSTER_HOME"] = str(warehouse.dagster_home)
    use_psycopg2_driver()
    name = args.name or f"worker-{os.getpid()}@{os.uname().nodename}"
    print(
        f"synthdata worker {name}: steps from {broker}, warehouse {warehouse.root}, "
        f"{args.threads} torch thread(s)",
        flush=True,
    )
    try:
        return run_worker(
            broker,
            name=name,
            threads=args.threads,
            process_per_step=args.process_per_step or config.execution.process_per_stage,
            logfile=Path(args.logfile) if args.logfile else None,
        )
    except BrokerUnreachable as exc:
        print(f"synthdata worker: {exc}", file=sys.stderr)
        return 2


def _run_study(
    config,
    warehouse: Warehouse,
    force: bool,
    lock_fd: int | None,
    parallel: int = 1,
    workers=None,
    threads: int | None = None,
) -> int:
    from synthdata_assets import study
    from synthdata_assets.orchestrate import RunFailed, materialize, recorded_stages
    from synthdata_assets.terminal import runs_table

    print(
        f"synthdata: preset {config.preset}, task {config.task.name}, "
        f"data sizes {list(config.data_sizes)}, seeds {list(config.seeds)}"
        + (
            f", SFT alone at {list(config.sft_reference_sizes)}"
            if config.sft_reference_sizes
            else ""
        )
    )
    print(f"warehouse: {warehouse.root}")
    # A stage is reused only when it was made under the current settings, after the stages
    # it reads; the rest of its partition is recomputed (study.stale_stages).
    current = study.accepted_fingerprints(config)
    launch = {"lock_fd": lock_fd}

    def outdated(stages: tuple[str, ...], partition: str | None = None) -> dict[str, str]:
        """The stale ``stages`` and why (study.stale_reasons)."""
        recorded = recorded_stages(study.SETUP_STAGES)
        if partition is not None:
            recorded |= recorded_stages(stages, partition)
        return study.stale_reasons(stages, recorded, current)

    def stale(stages: tuple[str, ...], partition: str | None = None) -> dict[str, str]:
        return dict.fromkeys(stages, "--force") if force else outdated(stages, partition)

    runs = []
    start = time.perf_counter()
    try:
        setup = stale(study.SETUP_STAGES)
        if setup:
            runs.append(("setup", materialize(",".join(setup), warehouse, **launch).seconds))
        else:
            print(f"  = {', '.join(study.SETUP_STAGES)}: up to date")
        records = _partitions(
            config, (stale, outdated), warehouse, launch, parallel, workers, threads
        )
        reference = set(study.reference_partition_keys(config))
        runs += [(_run_label(r, reference), r.seconds) for r in records]
        report = materialize(",".join(study.REPORT_STAGES), warehouse, **launch)
        runs.append(("report", report.seconds))
    except RunFailed as exc:
        print(f"\n{exc}", file=sys.stderr)
        return 1
    # Partitions that ran at once overlap: their sum is not the study's time.
    wall = time.perf_counter() - start if parallel > 1 else None
    print(f"\n{runs_table(runs, wall)}\n")
    print((warehouse.reports / "scaling_report.md").read_text())
    print(_credit_vs_truth(warehouse, config.partition_keys, config.credit.rollout_policy))
    print(_cue_following(warehouse, config.partition_keys))
    if config.task.name == "star_graph":
        # The didactic study's own figure: the first step, the only decision of a path.
        print((warehouse.reports / "first_step_report.md").read_text())
        print(f"plot: {warehouse.reports / 'first_steps.png'}")
    print(f"plot: {warehouse.reports / 'scaling_curves.png'}")
    print(f"logs: {warehouse.reports / 'logs'}")
    print(
        '\nNext: query the tables with `synthdata sql "SELECT ..."`, '
        "or browse runs and assets with `make ui`."
    )
    return 0


def _partitions(
    config,
    judges,
    warehouse: Warehouse,
    launch: dict,
    parallel: int,
    workers,
    threads: int | None = None,
):
    """Materialize every partition with stale stages: one after another, or ``parallel`` at
    once (on Celery workers, or as runs on this machine with ``threads`` torch threads each).
    ``judges``: the stages to run of a partition (``--force``: all), and those not made under
    the current settings, each with why (printed). Returns the runs in the study's order."""
    from synthdata_assets import study
    from synthdata_assets.orchestrate import RunFailed, materialize, materialize_parallel
    from synthdata_assets.workers import thread_env

    stale, outdated = judges
    jobs = []
    # The study's partitions, then those of SFT alone past its largest size.
    references = study.reference_partition_keys(config)
    reference = set(references)
    for key in study.partition_keys(config) + references:
        stages = _stages_of(key, reference)
        todo = stale(stages, key)
        if not todo:
            alone = " (SFT reference)" if key in reference else ""
            print(f"  = [{key}]{alone}: up to date (--force recomputes)")
            continue
        if len(todo) < len(stages):
            print(f"  ~ [{key}]: recomputing {study.explain_stale(todo)}")
        jobs.append((",".join(todo), key))
    env = None if threads is None else thread_env(threads)
    if parallel > 1 and len(jobs) > 1:
        where = f"{threads} torch thread(s) each" if threads else "stage logs: workers' logs"
        print(f"  {len(jobs)} partitions, {parallel} at a time, the largest first ({where})")
        healthy = workers.problem if workers is not None else None
        # The largest partitions first, so that the last to finish is a small one: the sizes
        # are what the runs' times scale with.
        order = sorted(jobs, key=lambda job: -study.data_size_of(job[1]))
        done = materialize_parallel(
            order, warehouse, parallel=parallel, healthy=healthy, env=env, **launch
        )
        by_key = {record.partition: record for record in done}
        records = [by_key[key] for _, key in jobs]
    else:
        records = [
            materialize(sel, warehouse, key, label=key, env=env, **launch) for sel, key in jobs
        ]
    for _, key in jobs:
        # A step records the fingerprint of the settings of the process that ran it: a worker
        # started with another SYNTHDATA_CONFIG leaves its stages stale here.
        if wrong := outdated(_stages_of(key, reference), key):
            raise RunFailed(
                f"[{key}]: {', '.join(wrong)} were written under other settings than this "
                "run's: start every worker with this run's SYNTHDATA_CONFIG and "
                "SYNTHDATA_PRESET; the next run recomputes them"
            )
    return records


def _stages_of(key: str, reference: set[str]) -> tuple[str, ...]:
    """The stages of partition ``key``: SFT alone for the keys of ``reference``."""
    from synthdata_assets import study

    return study.REFERENCE_STAGES if key in reference else study.PARTITION_STAGES


def _run_label(record, reference: set[str]) -> str:
    """A partition's row in the table of run times (``reference``: the SFT-only keys)."""
    family = "sft reference" if record.partition in reference else "partition"
    return f"{family} {record.partition}"


def _credit_vs_truth(warehouse: Warehouse, partitions: list, policy: str) -> str:
    """How often the Monte Carlo first pit is the true first wrong step (``@credit_vs_truth``),
    per data size, for the study's rollout policy; a line saying so where there is no truth."""
    from warehouse.query import QueryError, run_query

    try:
        result = run_query("@credit_vs_truth", warehouse, partitions)
    except QueryError as exc:
        return f"First pits vs ground truth: not available ({exc})"
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    rows = [r for r in rows if r["rollout_policy"] == policy and r["ground_truth"]]
    if not rows:
        return "First pits vs ground truth: the task has no per-step ground truth."
    lines = [f"First pits ({policy}) vs the true first wrong step, per data size and seed:"]
    lines += [f"  {r['data_size']}|{r['seed']}: {_pit_shares(r)}" for r in rows]
    return "\n".join(lines) + "\n"


def _pit_shares(row: dict) -> str:
    """One ``@credit_vs_truth`` row in words: no shares where no negative has a pit (under
    ``pit_rule: largest_drop`` a negative whose Q never drops has none)."""
    if not row["negatives_with_pit"]:
        return f"no pit in any of {row['negatives']} negatives"
    return (
        f"exact {row['share_pit_exact']:.0%}, at or one before "
        f"{row['share_pit_within_one']:.0%} of {row['negatives_with_pit']} negatives"
    )


def _cue_following(warehouse: Warehouse, partitions: list) -> str:
    """Per method, the share of the test choices where a dead end is stated first that its
    greedy answers followed (``@cue_following``); empty where the task has none."""
    from warehouse.query import QueryError, run_query

    try:
        result = run_query("@cue_following", warehouse, partitions)
    except QueryError as exc:
        return f"Cue following: not available ({exc})\n"
    rows = [dict(zip(result.columns, row, strict=True)) for row in result.rows]
    if not rows:
        return ""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    cells: dict[tuple, dict[str, str]] = {}
    for r in rows:
        share = f"{r['share_followed']:.0%}"
        cells.setdefault((r["data_size"], r["seed"]), {})[r["method"]] = share
    lines = [
        "Test choices where a dead end is stated before the step to take: share followed "
        "(@cue_following)",
        "  size|seed  " + "  ".join(f"{m:>12}" for m in methods),
    ]
    for (size, seed), by_method in cells.items():
        lines.append(
            f"  {f'{size}|{seed}':<10}" + "  ".join(f"{by_method.get(m, ''):>12}" for m in methods)
        )
    return "\n".join(lines) + "\n"


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain the embedded base by the recorded recipe (the shipped one by default), the
    best of ``--draws`` draws on the task's validation split, and score it on the demo
    preset's test split beside the shipped base's recorded score."""
    from synthdata_assets.pretrain import (
        SHIPPED_BASE,
        PretrainRecipe,
        draws_folder,
        pretrain_draws,
        shipped_meta,
    )

    out = Path(args.out) if args.out else SHIPPED_BASE
    default = PretrainRecipe()
    chosen_fields = {"seed": args.seed, "polish_steps": args.polish_steps}
    recipe = default.model_copy(update={k: v for k, v in chosen_fields.items() if v is not None})
    # Read before pretraining: with the default --out, the shipped meta is about to be replaced.
    shipped = (
        shipped_meta().get("greedy_accuracy") if (SHIPPED_BASE / "meta.json").is_file() else None
    )
    print(f"pretraining the embedded base into {out}; recipe: {recipe.model_dump_json()}")
    meta = pretrain_draws(
        recipe, out, draws=args.draws, jobs=args.jobs, score_on=load_config("demo"), log=print
    )
    score = meta["greedy_accuracy"]
    chosen = meta["recipe"]["seed"]
    if len(meta["draws"]) > 1:
        print("draws, by greedy accuracy on the validation split:")
        for row in sorted(meta["draws"], key=lambda row: -row["validation_accuracy"]):
            mark = "  <- kept" if row["seed"] == chosen else ""
            print(
                f"  seed {row['seed']:>3}  {row['validation_accuracy']:6.1%}  "
                f"final loss {row['final_loss']:.3f}{mark}"
            )
        print(f"every draw stays in {draws_folder(out)}")
    print(
        f"done: seed {chosen}, {meta['parameters']:,} parameters, "
        f"drill accuracy {meta['drill_accuracy']:.1%}, final loss {meta['final_loss']:.3f}, "
        f"greedy accuracy {score['accuracy']:.1%} on the demo preset's "
        f"{score['test_problems']} test problems"
        + (f" (the shipped base: {shipped['accuracy']:.1%})" if shipped else "")
    )
    changed = {"seed": chosen} if chosen != default.seed else {}
    if recipe.polish_steps != default.polish_steps:
        changed["polish_steps"] = recipe.polish_steps
    if changed:
        fields = ", ".join(f"PretrainRecipe.{k} = {v}" for k, v in changed.items())
        print(
            f"to record this base as the recipe, set {fields} in synthdata_assets/pretrain.py "
            "(a test compares the recipe with the shipped meta.json)"
        )
    print(
        "note: draws of this recipe differ widely (2 of 25 draws measured reach 48-64% of the "
        "task with phase 3, the others about 25% at most; the shipped base is seed 15), so "
        "compare the two scores before you commit this base as "
        "the shipped one; `git restore models/embedded-base` brings the shipped one back. "
        "See docs/laptop-study.md."
    )
    return 0


def cmd_synthesize(args: argparse.Namespace) -> int:
    """Write a GSM8K-format pool of new problems (synthdata_assets/synthesis.py)."""
    from synthdata_assets.synthesis import SynthesisSettings, settings_record, synthesize_pool
    from synthdata_assets.tasks.realdata import DataFormatError, load_gsm8k
    from synthdata_assets.terminal import progress_logger
    from training.generation.openai_engine import OpenAIBackendError, OpenAIGenerator

    out = Path(args.out)
    if not out.parent.is_dir():
        print(
            f"synthdata synthesize: no folder {str(out.parent)!r}; create it first", file=sys.stderr
        )
        return 2
    try:
        settings = SynthesisSettings(
            size=args.size,
            shots=args.shots,
            votes=args.votes,
            min_agreement=args.min_agreement,
            temperature=args.temperature,
            max_new_tokens=args.max_new_tokens,
            seed=args.seed,
            max_candidates=args.max_candidates,
        )
        seeds = load_gsm8k(args.seeds, split="seed")
    except (ValueError, OSError) as exc:  # DataFormatError is a ValueError
        where = "" if isinstance(exc, (DataFormatError, OSError)) else "--"
        print(f"synthdata synthesize: {where}{exc}", file=sys.stderr)
        return 2
    cache = Path(args.cache) if args.cache else out.with_name(f"{out.stem}.cache.jsonl")
    try:
        generator = OpenAIGenerator(
            args.base_url,
            model=args.model,
            api=args.api,
            max_concurrency=args.concurrency,
            cache_path=cache,
            log=print,
        )
        rows, report = synthesize_pool(
            seeds, generator, settings, progress=progress_logger(print, "requests", every_s=10)
        )
    except OpenAIBackendError as exc:
        print(
            f"synthdata synthesize: {exc}\n(the requests that arrived are in {cache})",
            file=sys.stderr,
        )
        return 1
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {
        **settings_record(settings, generator),
        **report.summary(),
        "kept_in_pool": len(rows),
    }
    summary_path = out.with_name(f"{out.stem}.summary.json")
    write_text_atomic(summary_path, json.dumps(summary, indent=2) + "\n")
    print(
        f"wrote {len(rows)} problems to {out} ({report.summary()['candidates']} candidates: "
        + ", ".join(f"{n} {o}" for o, n in report.counts().items())
        + f"); summary in {summary_path}"
    )
    if len(rows) < settings.size:
        print(
            f"synthdata synthesize: only {len(rows)} of {settings.size} problems kept within "
            f"{settings.candidate_limit} candidates; raise --max-candidates or lower "
            "--min-agreement",
            file=sys.stderr,
        )
        return 1
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from synthdata_assets.orchestrate import claim_instance, open_instance, serve, stop_on_sigterm
    from synthdata_assets.preflight import usable_warehouse
    from warehouse.instance import write_instance_settings
    from warehouse.lock import WarehouseBusy, WarehouseLock

    stop_on_sigterm()
    config = load_config()  # fail here, with the field named, rather than inside the UI
    warehouse = usable_warehouse()
    # Write the instance's settings and create or migrate its storage while no synthdata run
    # can be doing the same; a run that holds the warehouse has done it already, and the UI
    # can watch it.
    with contextlib.suppress(WarehouseBusy), WarehouseLock(warehouse.root):
        write_instance_settings(warehouse.dagster_home, config.execution.accelerator_slots or 1)
        open_instance()
        claim_instance(warehouse)
    cmd = [sys.executable, "-m", "dagster", "dev", "-w", str(REPO_ROOT / "workspace.yaml")]
    cmd += ["-h", args.host, "-p", str(args.port)]
    print(f"Dagster UI on http://{args.host}:{args.port} (instance: {warehouse.dagster_home})")
    try:
        return serve(cmd, cwd=REPO_ROOT)
    except KeyboardInterrupt as exc:
        return _stopped("ui", exc)


def _stopped(command: str, exc: KeyboardInterrupt, after: str = "") -> int:
    """Say how ``synthdata COMMAND`` was stopped (SIGTERM: 143, Ctrl-C: 130), no traceback.

    Further presses are ignored from here on: what is left (stopping local workers, releasing
    the lock, leaving the interpreter) is bounded, and a press landing in it would only print
    a traceback from wherever it struck, often Python's own shutdown."""
    from synthdata_assets.orchestrate import Interrupted

    signal.signal(signal.SIGINT, signal.SIG_IGN)

    by_signal = isinstance(exc, Interrupted)
    print(
        f"\nsynthdata {command}: stopped ({exc if by_signal else 'Ctrl-C'}){after}", file=sys.stderr
    )
    return 143 if by_signal else 130


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--force", action="store_true", help="recompute partitions that are already materialized"
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="when another run holds the warehouse, wait for it instead of refusing",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="start N Celery workers on this machine (broker: execution.broker, else the "
        "local Redis) and run up to N partitions at once, one step per worker",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="T",
        help="torch threads per worker, or per run (default: this machine's cores over the "
        "workers or execution.parallel_runs)",
    )


def _synthesize_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("seeds", help="GSM8K-format JSONL of seed problems (question, answer)")
    p.add_argument("out", help="the pool to write (JSONL; read it with task.train_path)")
    p.add_argument("--size", type=int, required=True, help="problems to keep")
    p.add_argument("--base-url", required=True, help="the server's root, http://host:port")
    p.add_argument("--model", help="model name (default: the first one the server lists)")
    p.add_argument("--api", choices=("completions", "chat"), default="completions")
    p.add_argument("--shots", type=int, default=4, help="seed examples in each prompt")
    p.add_argument("--votes", type=int, default=4, help="solutions asked per new problem")
    p.add_argument(
        "--min-agreement", type=float, default=0.75, help="share of votes that must agree"
    )
    p.add_argument("--temperature", type=float, default=0.7)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-candidates", type=int, help="candidates to try at most (default 4x size)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--cache", help="request cache (default: OUT's name with .cache.jsonl)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {value}")
    return value


def _add_pretrain_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain the embedded task's base model by the recorded recipe "
        "(writes models/embedded-base, the folder the study ships with)",
    )
    p.add_argument("--out", help="write the base here instead of models/embedded-base")
    p.add_argument(
        "--draws",
        type=_positive_int,
        default=1,
        help="pretrain this many draws (seeds recipe.seed, recipe.seed+1, ...) and keep the "
        "best on the task's validation split (default 1: the recorded seed alone)",
    )
    p.add_argument(
        "--jobs",
        type=_positive_int,
        help="draws trained at once, one process and one torch thread each (default: one per "
        "CPU core)",
    )
    p.add_argument(
        "--seed",
        type=_non_negative_int,
        help="the first draw's seed (default: the recipe's); --draws N trains seed..seed+N-1",
    )
    p.add_argument(
        "--polish-steps",
        type=_non_negative_int,
        help="phase 3: this many more updates on phase 2's data at a lower learning rate "
        "(default: the recipe's; 0 leaves phase 3 out)",
    )
    p.set_defaults(func=cmd_pretrain)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="synthdata", description=__doc__.split("::")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="materialize the whole study for the current preset: every data_size x seed "
        "partition not yet materialized, then the scaling curves",
    )
    _run_arguments(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("sql", help="run a read-only SQL query against the warehouse")
    p.add_argument("query", help="SQL text, or @name for warehouse/sql/name.sql")
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    p.set_defaults(func=cmd_sql)

    p = sub.add_parser("grade", help="grade completions in a JSONL file against gold answers")
    p.add_argument("file", help="JSONL rows with 'completion' and 'answer' (optional 'format')")
    p.add_argument("-o", "--output", help="write graded rows here instead of stdout")
    p.add_argument(
        "--answer-format",
        choices=("embedded", "gsm8k", "math", "star_graph"),
        help="force one answer format for every row (default: the row's 'format', else inferred)",
    )
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("config", help="print the resolved configuration as JSON")
    p.set_defaults(func=cmd_config)

    _add_pretrain_parser(sub)

    p = sub.add_parser(
        "worker",
        help="serve the steps of runs from a Celery broker (execution.broker); start one per "
        "GPU, on any machine that sees the warehouse at the same path",
    )
    p.add_argument("--broker", help="the broker URL (default: execution.broker, else local Redis)")
    p.add_argument("--name", help="the worker's name in logs and the UI (default: worker-PID@host)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument(
        "--process-per-step",
        action="store_true",
        help="each step in a fresh process (default: execution.process_per_stage)",
    )
    p.add_argument("--logfile", help="write the worker's log here instead of stderr")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser(
        "synthesize",
        help="write a GSM8K-format pool of new problems in the style of a seed set, from a "
        "model behind an OpenAI-compatible API; keeps a problem when its solutions agree",
    )
    _synthesize_arguments(p)
    p.set_defaults(func=cmd_synthesize)

    p = sub.add_parser("ui", help="open the Dagster UI on the warehouse's instance")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=3000)
    p.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    from synthdata_assets.preflight import PreflightError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, PreflightError) as exc:
        print(f"synthdata: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in _stopped
        print("\nsynthdata: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
