"""The ``dicomnode`` command line (SPEC: CLI contract).

Every command takes ``--config FILE`` (default ``$DICOMNODE_CONFIG``, else
``./dicomnode.toml``, else built-in defaults). Errors an admin can fix are
printed as one line on stderr with exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicomnode import __version__
from dicomnode.config import ConfigError, Settings, load_settings


class UsageError(Exception):
    """A one-line error for the admin."""


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(getattr(args, "config", None))


def _peer(text: str) -> tuple[str, str, int]:
    """Parse ``AET@HOST:PORT``."""
    try:
        aet, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not aet or not host or not port:
            raise ValueError
        return aet, host, int(port)
    except ValueError:
        raise UsageError(f"{text!r}: expected AET@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242") from None


# -- commands ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    from dicomnode.logs import setup_logging
    from dicomnode.service import Node

    settings = _settings(args)
    setup_logging(settings.log_level)
    Node(settings).run()
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from dicomnode.database import require_current_schema
    from dicomnode.logs import setup_logging
    from dicomnode.pipelines.registry import require_valid_pipelines
    from dicomnode.workers import WorkerPool

    settings = _settings(args)
    pipelines = [p for p in (args.pipelines or "").split(",") if p] or None
    require_valid_pipelines(settings, runs=pipelines)
    # A scale-out worker never migrates: the serving node (or `db upgrade`) owns the schema.
    require_current_schema(settings.database.url)
    setup_logging(settings.log_level)
    count = args.processes or max(1, settings.workers.processes)
    pool = WorkerPool(settings, count, pipelines, device=args.device)
    pool.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(2):
        pool.check()
    pool.stop()
    return 0


def _sessions(args: argparse.Namespace) -> Any:
    """Sessions of the configured database, whose schema must be current (never migrated here)."""
    from dicomnode.database import make_engine, require_current_schema, session_factory

    url = _settings(args).database.url
    require_current_schema(url)
    return session_factory(make_engine(url))


def _queue(args: argparse.Namespace) -> Any:
    from dicomnode.jobs import JobQueue

    return JobQueue(_sessions(args))


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    widths = {c: max([len(c), *(len(str(r.get(c) or "")) for r in rows)]) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c) or "").ljust(widths[c]) for c in columns))


def _listing(args: argparse.Namespace, listing: Any, fields: Sequence[Any]) -> Any:
    """The listing filter the REST API builds from the same fields (see ``jobs.JOB_LISTING``)."""
    values = {f.name: getattr(args, f.name) for f in fields}
    return listing.parse(**values, limit=args.limit, offset=args.offset)


def _add_listing_arguments(
    parser: argparse.ArgumentParser, fields: Sequence[Any], limit: int
) -> None:
    """One option per listing field (the REST API's query parameters), then paging and --json."""
    for field in fields:
        parser.add_argument(
            *field.cli_flags, dest=field.name, choices=field.choices or None, help=field.help
        )
    parser.add_argument("--limit", type=int, default=limit, help="page size (1-1000)")
    parser.add_argument("--offset", type=int, default=0, help="items to skip (paging)")
    parser.add_argument("--json", action="store_true")


def cmd_jobs_list(args: argparse.Namespace) -> int:
    from dicomnode.jobs import JOB_LISTING, JobFilter, job_to_dict

    jobs = [job_to_dict(j) for j in _queue(args).list(_listing(args, JobFilter, JOB_LISTING))]
    if args.json:
        print(json.dumps(jobs, indent=1))
        return 0
    for job in jobs:
        # Objects a destination does not take (its `outputs`) are not owed to it.
        owed = [o for o in job["outputs"] if o["status"] != "skipped"]
        job["outputs"] = f"{sum(o['status'] == 'sent' for o in owed)}/{len(owed)} sent"
        job["error"] = (job["error"] or "")[:60]
    _print_table(
        jobs, ["id", "status", "pipeline", "study_instance_uid", "created_at", "outputs", "error"]
    )
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    from dicomnode.jobs import job_to_dict

    job = job_to_dict(_queue(args).get(args.id), events=True)
    if args.json:
        print(json.dumps([job], indent=1))
        return 0
    retrieve = job["retrieve"]
    if retrieve is not None:
        of = f" of {retrieve['expected']}" if retrieve["expected"] is not None else ""
        done = f", done {retrieve['finished_at']}" if retrieve["finished_at"] else ""
        job["retrieve"] = f"from {job['source']}: {retrieve['received'] or 0}{of} instance(s){done}"
    for key in (
        "id",
        "status",
        "pipeline",
        "route",
        "study_instance_uid",
        "requested_by",
        "retrieve",
        "model",
        "revision",
        "error",
        "attempts",
        "created_at",
        "started_at",
        "finished_at",
    ):
        print(f"{key:>18}: {job[key] if job[key] is not None else ''}")
    if len(job["revisions"]) > 1:
        print("\nrevisions:")
        for r in job["revisions"]:
            why = r["reason"] or "first results"
            print(f"  {r['number']}  {r['created_at']}  {r['model'] or ''}  {why}")
    print("\ntimeline:")
    for e in job["events"]:
        took = f" ({e['duration_s']:.2f} s)" if e["duration_s"] is not None else ""
        print(f"  {e['at']}  {e['stage']:<10} {e['level']:<7} {e['message']}{took}")
    if job["outputs"]:
        print("\noutputs:")
        for o in job["outputs"]:
            print(
                f"  {o['sop_instance_uid']}  -> {o['destination']}: {o['status']} {o['error'] or ''}"
            )
    return 0


def cmd_jobs_retry(args: argparse.Namespace) -> int:
    job = _queue(args).retry(args.id)
    print(f"job {job.id}: {job.status}")
    return 0


def cmd_jobs_cancel(args: argparse.Namespace) -> int:
    job = _queue(args).cancel(args.id)
    print(f"job {job.id}: {job.status}")
    return 0


def cmd_studies_list(args: argparse.Namespace) -> int:
    from dicomnode.studies import STUDY_LISTING, StudyFilter, find_studies

    filters = _listing(args, StudyFilter, STUDY_LISTING)
    rows, _total = find_studies(_sessions(args), filters)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        row["series"] = len(row["series"])
    _print_table(
        rows,
        [
            "study_instance_uid",
            "status",
            "series",
            "instances",
            "calling_aet",
            "last_received_at",
            "note",
        ],
    )
    return 0


def _date(text: str | None, name: str) -> Any:
    """``YYYY-MM-DD`` (or ``YYYYMMDD``) as a date; None stays None."""
    from datetime import date

    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{name}: {text!r} is not a date such as 2026-11-01") from None


def _rate(text: str | None) -> float | None:
    """``N/h`` (or a plain N): studies per hour."""
    if not text:
        return None
    number = text.removesuffix("/h")
    try:
        value = float(number)
    except ValueError:
        raise UsageError(f"--rate: {text!r} is not a rate such as 20/h") from None
    if value <= 0:
        raise UsageError("--rate: must be more than 0 studies per hour")
    return value


def _send_to(text: str | None) -> list[str] | None:
    return None if text is None else [t for t in text.split(",") if t]


def cmd_run(args: argparse.Namespace) -> int:
    from dicomnode.jobs import JobQueue
    from dicomnode.ondemand import request_study

    settings = _settings(args)
    job = request_study(
        settings,
        JobQueue(_sessions(args)),
        pipeline=args.pipeline,
        study_instance_uid=args.study,
        source=args.source,
        requested_by=f"cli:{os.environ.get('USER', 'unknown')}",
        send_to=_send_to(args.send_to),
        priority=args.priority,
    )
    fetch = f", fetched from {args.source} first" if args.source else ""
    print(f"job {job.id}: queued {args.pipeline} on study {args.study}{fetch}")
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    from dicomnode.jobs import JobQueue
    from dicomnode.ondemand import backfill

    settings = _settings(args)
    result = backfill(
        settings,
        JobQueue(_sessions(args)),
        source=args.source,
        pipeline=args.pipeline,
        requested_by=f"cli:{os.environ.get('USER', 'unknown')}",
        modality=args.modality,
        since=_date(args.since, "--since"),
        until=_date(args.until, "--until"),
        limit=args.limit,
        rate_per_hour=_rate(args.rate),
        send_to=_send_to(args.send_to),
        dry_run=args.dry_run,
    )
    if args.json:
        print(
            json.dumps(
                [
                    *(
                        {
                            "study_instance_uid": uid,
                            "action": "queued",
                            "job": job or None,
                            "not_before": when.isoformat(),
                        }
                        for uid, job, when in result.queued
                    ),
                    *(
                        {"study_instance_uid": uid, "action": "skipped", "reason": why}
                        for uid, why in result.skipped
                    ),
                ],
                indent=1,
            )
        )
        return 0
    print(("dry run: " if args.dry_run else "") + result.summary(args.source, args.pipeline))
    for uid, why in result.skipped:
        print(f"  skipped {uid}: {why}")
    if result.queued and result.queued[-1][2] > result.queued[0][2]:
        print(f"  the last starts at {result.queued[-1][2].isoformat()} (--rate)")
    return 0


def cmd_query(args: argparse.Namespace) -> int:
    from dicomnode.ondemand import open_named_source
    from dicomnode.retrieval import QueryError, StudyQuery

    settings = _settings(args)
    try:
        query = StudyQuery(
            patient_id=args.patient_id,
            issuer_of_patient_id=args.issuer,
            accession_number=args.accession,
            study_instance_uid=args.study,
            since=_date(args.since, "--since"),
            until=_date(args.until, "--until"),
            modality=args.modality,
        )
    except QueryError as exc:
        raise UsageError(str(exc)) from None
    matches = open_named_source(settings, args.source).find_studies(query)
    rows = [m.as_dict() for m in matches]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        row["modalities"] = "/".join(row["modalities"])
    _print_table(
        rows,
        [
            "study_instance_uid",
            "study_date",
            "accession_number",
            "modalities",
            "series",
            "instances",
            "study_description",
        ],
    )
    return 0


def cmd_echo(args: argparse.Namespace) -> int:
    from dicomnode.scu import echo

    aet, host, port = _peer(args.peer)
    ok, message = echo(aet, host, port, calling_aet=args.calling_aet)
    print(message)
    return 0 if ok else 1


def cmd_send(args: argparse.Namespace) -> int:
    from dicomnode.scu import collect_files, send

    aet, host, port = _peer(args.to)
    files = collect_files(args.paths)
    if not files:
        raise UsageError("no files to send")
    report = send(files, aet, host, port, calling_aet=args.calling_aet)
    print(report.summary())
    for path, error in report.failures.items():
        print(f"  {path}: {error}", file=sys.stderr)
    return 0 if not report.failures else 1


def cmd_config_check(args: argparse.Namespace) -> int:
    from dicomnode.pipelines.registry import require_valid_pipelines

    settings = load_settings(args.file, resolve=False)
    # Every route's pipeline, every [pipelines.NAME] section and every bundle.
    require_valid_pipelines(settings)
    print(
        f"{args.file}: OK ({len(settings.routes)} route(s), {len(settings.destinations)} "
        f"destination(s), {len(settings.sources)} source(s), AE {settings.node.ae_title} on "
        f"port {settings.node.port})"
    )
    return 0


def cmd_pipelines_list(args: argparse.Namespace) -> int:
    from dicomnode.pipelines import PipelineError
    from dicomnode.pipelines.registry import installed, own_options, pipeline_class

    rows = []
    for name, entry in sorted(installed().items()):
        try:
            cls = pipeline_class(name)
            rows.append(
                {"name": name, "class": entry.value, "options": ", ".join(own_options(cls))}
            )
        except PipelineError as exc:  # a broken plugin is listed with its reason
            rows.append({"name": name, "class": entry.value, "options": f"cannot load: {exc}"})
    _print_table(rows, ["name", "class", "options"])
    return 0


def cmd_pipelines_options(args: argparse.Namespace) -> int:
    from dicomnode.pipelines import PipelineError
    from dicomnode.pipelines.registry import common_options_markdown, options_markdown

    try:
        text = options_markdown(args.names or None)
    except PipelineError as exc:
        raise UsageError(str(exc)) from None
    print("Keys every model pipeline takes (`ModelOptions`):\n")
    print(common_options_markdown())
    print(text, end="")
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from dicomnode.database import upgrade

    settings = _settings(args)
    upgrade(settings.database.url)
    print(f"database at {settings.database.url}: schema up to date")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from dicomnode.demo import run_demo

    return run_demo(workdir=Path(args.workdir), keep=args.keep)


# -- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from dicomnode.jobs import JOB_LISTING
    from dicomnode.studies import STUDY_LISTING

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="TOML config (default: $DICOMNODE_CONFIG, else ./dicomnode.toml)",
    )
    parser = argparse.ArgumentParser(
        prog="dicomnode", parents=[common], description="PACS-integrated DICOM AI node"
    )
    parser.add_argument("--version", action="version", version=f"dicomnode {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("serve", parents=[common], help="receiver + scheduler + workers").set_defaults(
        func=cmd_serve
    )

    worker = sub.add_parser("worker", parents=[common], help="worker processes only (scale-out)")
    worker.add_argument(
        "--pipelines", help="comma-separated pipelines this worker runs (default: all)"
    )
    worker.add_argument("--device", help="device for the pipelines, e.g. cuda:1 or cpu")
    worker.add_argument(
        "--processes", type=int, help="worker processes (default: workers.processes)"
    )
    worker.set_defaults(func=cmd_worker)

    jobs = sub.add_parser("jobs", parents=[common], help="list and manage jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list", parents=[common], help="jobs, newest first")
    _add_listing_arguments(listing, JOB_LISTING, 100)
    listing.set_defaults(func=cmd_jobs_list)
    for name, func, text in (
        ("show", cmd_jobs_show, "one job with its timeline"),
        ("retry", cmd_jobs_retry, "run or resend a finished job again"),
        ("cancel", cmd_jobs_cancel, "cancel a job that has not finished"),
    ):
        p = jobs.add_parser(name, parents=[common], help=text)
        p.add_argument("id", type=int)
        if name == "show":
            p.add_argument("--json", action="store_true")
        p.set_defaults(func=func)

    studies = sub.add_parser("studies", parents=[common], help="received studies").add_subparsers(
        dest="studies_command", required=True
    )
    slist = studies.add_parser("list", parents=[common], help="studies, newest received first")
    _add_listing_arguments(slist, STUDY_LISTING, 50)
    slist.set_defaults(func=cmd_studies_list)

    run = sub.add_parser(
        "run", parents=[common], help="queue a pipeline on one study (fetched from a source first)"
    )
    run.add_argument("pipeline")
    run.add_argument("--study", required=True, metavar="UID", help="Study Instance UID")
    run.add_argument("--from", dest="source", metavar="SOURCE", help="a [[sources]] name")
    run.add_argument("--send-to", metavar="DEST,...", help="default: the pipeline's route's")
    run.add_argument("--priority", type=int, default=0)
    run.set_defaults(func=cmd_run)

    backfill = sub.add_parser(
        "backfill", parents=[common], help="queue a pipeline on a source's studies it has not done"
    )
    backfill.add_argument("--from", dest="source", required=True, metavar="SOURCE")
    backfill.add_argument("--pipeline", required=True)
    backfill.add_argument("--modality", help="a modality in the study, e.g. CT")
    backfill.add_argument("--since", metavar="DATE", help="study date from (YYYY-MM-DD)")
    backfill.add_argument("--until", metavar="DATE", help="study date to, included")
    backfill.add_argument("--limit", type=int, help="queue at most this many studies")
    backfill.add_argument("--rate", metavar="N/h", help="start at most N retrieves an hour")
    backfill.add_argument("--send-to", metavar="DEST,...", help="default: the pipeline's route's")
    backfill.add_argument("--dry-run", action="store_true", help="say what would be queued")
    backfill.add_argument("--json", action="store_true")
    backfill.set_defaults(func=cmd_backfill)

    query = sub.add_parser("query", parents=[common], help="find studies at a source")
    query.add_argument("--from", dest="source", required=True, metavar="SOURCE")
    query.add_argument("--patient-id")
    query.add_argument("--issuer", help="Issuer of Patient ID")
    query.add_argument("--accession", help="Accession Number")
    query.add_argument("--study", metavar="UID")
    query.add_argument("--modality")
    query.add_argument("--since", metavar="DATE")
    query.add_argument("--until", metavar="DATE")
    query.add_argument("--json", action="store_true")
    query.set_defaults(func=cmd_query)

    echo = sub.add_parser("echo", parents=[common], help="C-ECHO a peer")
    echo.add_argument("peer", metavar="AET@HOST:PORT")
    echo.add_argument("--calling-aet", default="DICOMNODE")
    echo.set_defaults(func=cmd_echo)

    send = sub.add_parser("send", parents=[common], help="C-STORE files or folders to a peer")
    send.add_argument("paths", nargs="+", metavar="PATH")
    send.add_argument("--to", required=True, metavar="AET@HOST:PORT")
    send.add_argument("--calling-aet", default="DICOMNODE")
    send.set_defaults(func=cmd_send)

    config = sub.add_parser("config", parents=[common], help="configuration").add_subparsers(
        dest="config_command", required=True
    )
    check = config.add_parser("check", parents=[common], help="validate a config file")
    check.add_argument("file", metavar="FILE")
    check.set_defaults(func=cmd_config_check)

    pipelines = sub.add_parser(
        "pipelines", parents=[common], help="installed pipelines and their options"
    ).add_subparsers(dest="pipelines_command", required=True)
    pipelines.add_parser(
        "list", parents=[common], help="pipelines installed (entry-point group dicomnode.pipelines)"
    ).set_defaults(func=cmd_pipelines_list)
    options = pipelines.add_parser(
        "options", parents=[common], help="the [pipelines.NAME] keys, as Markdown tables"
    )
    options.add_argument("names", nargs="*", metavar="NAME", help="default: every installed one")
    options.set_defaults(func=cmd_pipelines_options)

    db = sub.add_parser("db", parents=[common], help="database").add_subparsers(
        dest="db_command", required=True
    )
    db.add_parser("upgrade", parents=[common], help="apply schema migrations").set_defaults(
        func=cmd_db_upgrade
    )

    demo = sub.add_parser("demo", parents=[common], help="end-to-end demo on synthetic studies")
    demo.add_argument("--workdir", default="var/demo")
    demo.add_argument("--keep", action="store_true", help="keep the demo's files")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``dicomnode`` console script."""
    from dicomnode.database import SchemaError
    from dicomnode.jobs import JobError
    from dicomnode.retrieval import QueryError, RetrieveError
    from dicomnode.store import RecoveryError

    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (
        ConfigError,
        UsageError,
        JobError,
        SchemaError,
        RecoveryError,
        RetrieveError,
        QueryError,
    ) as exc:
        # One line per problem (config check may find several), never a traceback.
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"dicomnode: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `dicomnode ... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
