"""screener.aggregate.report_data on a real database: the archive is read once for the users shown, with the same
one-row-per-message rule as the scan, and pages of the served review page add up to the whole report."""

from __future__ import annotations

from datetime import timedelta

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener import aggregate
from screener.runs import open_run
from screener.scan import scan
from screener.settings import Settings


def test_a_duplicated_message_id_counts_for_the_user_of_its_earliest_copy_only(tmp_path):
    hour = timedelta(hours=1)
    rows = [(f"a{i}", "ann", AS_OF - (i + 2) * hour, "bad day") for i in range(5)]
    rows += [(f"b{i}", "bob", AS_OF - (i + 2) * hour, "bad day") for i in range(5)]
    # "dup" first belongs to ann (10:00), a later copy to bob (11:00): it is ann's message, as in the scan.
    rows += [("dup", "ann", AS_OF - 2 * hour, "bad dup"), ("dup", "bob", AS_OF - hour, "bad dup")]
    db = write_archive(tmp_path / "a.duckdb", rows)
    scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    with open_run(db) as run:
        data = aggregate.report_data(run.store, run.run_id)
        just_bob = aggregate.report_data(run.store, run.run_id, page=2, page_size=1)
    users = {u["user_id"]: u for u in data["flagged"]}
    assert (users["ann"]["n_messages"], users["bob"]["n_messages"]) == (6, 5)
    evidence = {uid: sorted(m["message_id"] for m in u["evidence"]) for uid, u in users.items()}
    assert "dup" not in evidence["bob"]
    assert sum(day["n"] for day in users["ann"]["daily"]) == 6
    assert sum(day["n"] for day in users["bob"]["daily"]) == 5
    assert [u["user_id"] for u in just_bob["flagged"]] == ["bob"]
    assert just_bob["flagged"][0]["daily"] == users["bob"]["daily"]


def test_the_pages_together_are_the_whole_report(tmp_path):
    db = write_archive(tmp_path / "a.duckdb", generated_rows(n_users=30, per_user=12))
    settings = Settings(min_ratio=0.5)
    scan(db, settings, as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    with open_run(db) as run:
        whole = aggregate.report_data(run.store, run.run_id)
        pages = [aggregate.report_data(run.store, run.run_id, page=n, page_size=4) for n in (1, 2, 3)]
        beyond = aggregate.report_data(run.store, run.run_id, page=99, page_size=4)
    assert len(whole["flagged"]) == 10 and whole["page"] is None
    assert [p["page"]["number"] for p in pages] == [1, 2, 3] and pages[0]["page"]["pages"] == 3
    assert [len(p["flagged"]) for p in pages] == [4, 4, 2]
    assert beyond["page"]["number"] == 3 and beyond["flagged"] == pages[2]["flagged"]
    assert [u for p in pages for u in p["flagged"]] == whole["flagged"]  # one state: rank order throughout
