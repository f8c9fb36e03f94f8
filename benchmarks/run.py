"""``python -m benchmarks [--quick] [--only 1,3]``: start the services, run the scenarios, report."""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from .harness import Services, prefault_memory
from .results import Results, chart, machine, summary, table, write_json

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "docs" / "benchmarks-save-latency.png"
PLANS = ROOT / "docs" / "query-plans.rst"
RESULTS = ROOT / "benchmarks" / "results"


def run(
    scenarios: set[int],
    plan_name: str,
    workdir: Path,
    chart_path: Path | None,
    out: Path | None,
    plans_path: Path | None = None,
) -> Results:
    """Run ``scenarios`` of the plan ``full``, ``quick`` or ``tiny``; services start and stop here."""
    import queued_storage

    if not Path(queued_storage.__file__).resolve().is_relative_to(ROOT):
        raise SystemExit(f"queued_storage is imported from {queued_storage.__file__}, not from {ROOT}.")
    services = Services(workdir)
    services.start()
    try:
        import django

        django.setup()
        from django.core.management import call_command

        from . import celery_app  # noqa: F401 - the app save() publishes with, as in a project
        from . import scenarios as s

        plan = {"full": s.FULL, "quick": s.QUICK, "tiny": s.TINY}[plan_name]
        call_command("migrate", run_syncdb=True, verbosity=0)  # and the tables of benchmarks.models
        results = Results()
        started = time.monotonic()

        def step(number: int, title: str) -> bool:
            if number in scenarios:
                print(f"\n[{time.monotonic() - started:6.1f} s] scenario {number}: {title}", flush=True)
            return number in scenarios

        if plan.prefault and scenarios & {1, 2, 4, 6, 7, 9}:  # the ones that write large files
            size, seconds = prefault_memory()
            print(f"Touched {size / 2**30:.1f} GiB of free memory once, in {seconds:.0f} s.", flush=True)
        # Scenarios that time the request path run first, with no worker competing for the CPU.
        if step(1, "upload: a model created with its file"):
            s.save_latency(services, results, plan)
        if step(2, "upload request through waitress"):
            s.upload_request(services, results, plan)
        if step(6, "message size"):
            s.message_size(services, results, plan)
        if step(7, "serving a local file"):
            s.serving(services, results, plan)
        if scenarios & {3, 4, 5}:
            with services.worker(1) as worker:
                if step(3, "url()"):
                    s.url_calls(services, results, plan)
                if step(4, "transfer throughput and memory"):
                    s.transfer(services, results, plan, worker)
                if step(5, "many small files, one worker process"):
                    s.small_files(services, results, plan, worker, 1)
                    s.small_files_wan(services, results, plan)
        if 5 in scenarios:
            with services.worker(2) as worker:
                step(5, "many small files, two worker processes")
                s.small_files(services, results, plan, worker, 2)
        if step(11, "recovery of a killed worker's files with no scheduler"):
            s.recovery(services, results, plan)
        if step(8, f"a table of {' and of '.join(f'{n:,}' for n in plan.scale_rows)} records"):
            from . import scale

            scale.run(services, results, plan, plans_path)
        if step(9, "what a commit costs"):
            from . import commits

            commits.run(services, results, plan)
        if step(10, "save() and many small files on django-tasks-db, beside Celery"):
            from . import tasksdb

            tasksdb.run(services, results, plan)
        print(f"\nDone in {time.monotonic() - started:.0f} s.\n")
        results.rows.sort(key=lambda row: int(row.scenario.split()[0]))
        print(table(results.rows))
        print("\n" + summary(results))
        meta = {"plan": plan_name, "when": datetime.now(timezone.utc).isoformat(), "machine": machine()}
        if out is not None:
            write_json(out, results, meta)
            print(f"\nResults: {out}")
        if chart_path is not None and 1 in scenarios:
            chart(results, chart_path, list(plan.save_sizes.items()))
            print(f"Chart: {chart_path}")
        return results
    finally:
        services.stop()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes and few repetitions (a couple of minutes)"
    )
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8,9,10,11", help="comma-separated scenario numbers")
    parser.add_argument(
        "--chart", type=Path, default=CHART, help=f"PNG to draw (default {CHART.relative_to(ROOT)})"
    )
    parser.add_argument(
        "--plans", type=Path, default=PLANS, help=f"query plans to write (default {PLANS.relative_to(ROOT)})"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, database)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of the JSON results")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # the smoke test
    args = parser.parse_args()
    scenarios = {int(n) for n in args.only.split(",") if n.strip()}
    plan = "tiny" if args.tiny else "quick" if args.quick else "full"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = Path(tempfile.mkdtemp(prefix="qs-bench-"))
    try:
        run(scenarios, plan, workdir, args.chart, args.results / f"{stamp}-{plan}.json", args.plans)
    finally:
        if args.keep:
            print(f"Work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
