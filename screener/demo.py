"""`screener demo`: the shipped example archive, written as a DuckDB file, scanned and reported."""

from __future__ import annotations

from datetime import timedelta
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from screener import aggregate, queries, report, runs
from screener.scan import scan
from screener.settings import Settings
from screener.store import Store


def archive_path() -> Path:
    return Path(str(resources.files("screener") / "demo_data" / "archive.parquet"))


def write_demo_db(db: Path) -> None:
    """A fresh demo database: an earlier demo's file in the same place is replaced."""
    for stale in (db, db.with_name(db.name + ".wal")):
        stale.unlink(missing_ok=True)
    con = duckdb.connect(str(db))
    try:
        con.register("screener_demo_archive", pq.read_table(archive_path()))
        con.execute(queries.load("demo_load"))
    finally:
        con.close()


def run_demo(directory: Path, model: str = "default", backend: str = "auto") -> tuple[runs.ScanResult, Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "messages.duckdb"
    write_demo_db(db)
    settings = Settings(model=model, backend=backend)
    with Store(db, settings) as store:
        store.attach_source(runs.resolve_source(db, None, settings))
        newest = store.scalar("source_max_time")
    # The archive is historical: windows end just after its last message, so the demo looks the same every day.
    result = scan(db, settings, as_of=newest + timedelta(minutes=1), progress=True)
    with runs.open_run(db, result.run_id, settings) as run:
        data = aggregate.report_data(run.store, run.run_id)
    report_path = report.write_report(data, directory / "report.html", "html")
    return result, db, report_path
