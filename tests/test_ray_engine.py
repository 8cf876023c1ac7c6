"""The Ray engine: same scores and flags as the local engine, idempotent reruns, a worker killed mid-batch, and an
archive and work folder in an S3-compatible server (moto's, on loopback)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener import objstore
from screener.cli import main
from screener.errors import ConfigError, ModelError
from screener.batching import token_budget_batches
from screener.ray_engine import RayOptions, ScoreWorker, block_key, scan_ray, worker_count
from screener.scan import scan
from screener.settings import Settings

HAVE_RAY = importlib.util.find_spec("ray") is not None
HAVE_MOTO = importlib.util.find_spec("moto") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed: pip install -e '.[ray-test]'")
needs_moto = pytest.mark.skipif(not HAVE_MOTO, reason="moto is not installed: pip install -e '.[ray-test]'")


# --- pure helpers -----------------------------------------------------------------------------------------------

def test_token_budget_batches_sort_by_length_and_cap_padded_tokens_and_rows():
    lengths = [5, 1, 3, 2, 8, 1]
    # sorted: idx 1 (1), 5 (1), 3 (2), 2 (3), 0 (5), 4 (8); budget 6 padded tokens, at most 3 rows
    batches = [b.tolist() for b in token_budget_batches(lengths, budget=6, max_rows=3)]
    assert batches == [[1, 5, 3], [2], [0], [4]]


def test_token_budget_batches_put_a_message_longer_than_the_budget_alone():
    batches = [b.tolist() for b in token_budget_batches([50, 2, 2], budget=10, max_rows=8)]
    assert batches == [[1, 2], [0]]


def test_block_key_names_the_set_of_messages_not_their_order():
    assert block_key(["m2", "m1"]) == block_key(["m1", "m2"])
    assert block_key(["m1", "m2"]) != block_key(["m1", "m3"])
    # a separator keeps ("ab", "c") and ("a", "bc") apart
    assert block_key(["ab", "c"]) != block_key(["a", "bc"])


def test_worker_count_is_one_actor_per_gpu_else_per_cpus_per_worker_unless_told():
    assert worker_count(RayOptions(), gpus=0, cpus=3) == 3
    assert worker_count(RayOptions(cpus_per_worker=2), gpus=0, cpus=7) == 3
    assert worker_count(RayOptions(), gpus=4, cpus=2) == 4
    assert worker_count(RayOptions(workers=2), gpus=4, cpus=64) == 2


def test_ray_options_below_one_are_refused():
    with pytest.raises(ConfigError, match="token_budget must be at least 1, got 0"):
        RayOptions(token_budget=0)
    with pytest.raises(ConfigError, match="workers must be at least 1, got 0"):
        RayOptions(workers=0)


def worker_for(tmp_path, clf, model_id=None, **kw) -> ScoreWorker:
    kw = {"token_budget": None, "max_rows": 64, **kw}
    return ScoreWorker("keyword", "cpu", model_id or clf.model_id, run_id=3, threshold=0.5,
                       scores_dir=str(tmp_path / "scores"), threads=None, loader=lambda name, device: clf, **kw)


class BatchRecorder(KeywordClassifier):
    def __init__(self) -> None:
        super().__init__()
        self.batches: list[list[str]] = []

    def predict_proba(self, texts):
        self.batches.append(list(texts))
        return super().predict_proba(texts)


def test_score_worker_scores_a_pending_file_in_token_budget_batches_and_closes_its_classifier(tmp_path):
    pending = tmp_path / "part-000000.parquet"
    pq.write_table(pa.table({"message_id": ["a", "b", "c"], "text": ["bad bad bad", "good", "bad"]}), pending)
    clf = BatchRecorder()
    worker = worker_for(tmp_path, clf, token_budget=2)
    summary = worker(pa.table({"path": [str(pending)]}))
    # word counts 1, 1 | 3: a pair of one-word texts fills the budget of 2, the three-word text goes alone
    assert clf.batches == [["good", "bad"], ["bad bad bad"]]
    (path,) = summary.column("file").to_pylist()
    assert path.endswith(f"{block_key(['a', 'b', 'c'])}.parquet") and summary.column("rows").to_pylist() == [3]
    written = pq.read_table(path)
    assert written.column("message_id").to_pylist() == ["a", "b", "c"]
    assert written.column("label").to_pylist() == ["negative", "positive", "negative"]
    assert written.column("run_id").to_pylist() == [3, 3, 3]
    assert clf.closed == 0
    del worker
    assert clf.closed == 1


def test_score_worker_refuses_another_model_id_and_closes_what_it_loaded(tmp_path):
    clf = KeywordClassifier()
    with pytest.raises(ModelError, match="every node must hold the same model files"):
        worker_for(tmp_path, clf, model_id="0123456789abcdef")
    assert clf.closed == 1


def test_expand_matches_one_component_per_glob_and_lists_folders(tmp_path):
    for name in ("a/x.parquet", "a/y.parquet", "b/z.parquet", "a/deeper/w.parquet"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"v": [1]}), tmp_path / name)
    _, files = objstore.expand(str(tmp_path / "*" / "*.parquet"))
    assert [f.rsplit("/", 2)[-2:] for f in files] == [["a", "x.parquet"], ["a", "y.parquet"], ["b", "z.parquet"]]
    _, files = objstore.expand(str(tmp_path / "a"))
    assert len(files) == 3


def test_write_parquet_replaces_a_file_whole_and_leaves_no_partial_file(tmp_path):
    fs, folder = objstore.resolve(str(tmp_path / "scores"))
    objstore.write_parquet(pa.table({"v": [1, 2]}), fs, f"{folder}/k.parquet")
    objstore.write_parquet(pa.table({"v": [3]}), fs, f"{folder}/k.parquet")
    assert os.listdir(tmp_path / "scores") == ["k.parquet"]
    assert pq.read_table(tmp_path / "scores" / "k.parquet").column("v").to_pylist() == [3]


# --- a local Ray cluster ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server on loopback; the environment points pyarrow (here and in Ray workers) at it."""
    if not HAVE_MOTO:
        yield None
        return
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield f"http://{host}:{port}"
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture(scope="module")
def ray_cluster(s3_server):
    """Two CPUs, so two CPU classifier actors; started after the S3 server so that workers inherit its
    environment."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed: pip install -e '.[ray-test]'")
    import ray
    from ray import cloudpickle

    import conftest

    # Test classifiers live in test modules the workers cannot import: send them by value.
    cloudpickle.register_pickle_by_value(conftest)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def keyword_loader(name: str, device: str) -> KeywordClassifier:
    return KeywordClassifier()


def rows_with_blanks() -> list[tuple]:
    rows = generated_rows()
    rows[3] = (rows[3][0], rows[3][1], rows[3][2], "   ")
    rows[40] = (rows[40][0], rows[40][1], rows[40][2], None)
    return rows


def table(db, sql: str) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def scores(db) -> dict[str, tuple[float, str]]:
    return {mid: (p, label) for mid, p, label in
            table(db, "SELECT message_id, p_negative, label FROM screener_scores")}


def flags(db, run_id: int) -> list[tuple]:
    return table(db, f"SELECT * EXCLUDE (run_id) FROM screener_flags WHERE run_id = {int(run_id)} ORDER BY rank")


@needs_ray
def test_ray_engine_gives_the_local_engines_scores_and_flags_and_a_rerun_scores_nothing(
        ray_cluster, tmp_path, tiny_model, tiny_threshold, monkeypatch):
    from screener.classifiers.registry import load_classifier
    from screener.store import Store

    released = []
    original = Store.release_cached_blocks
    monkeypatch.setattr(Store, "release_cached_blocks", lambda self: released.append(original(self)) or released[-1])
    settings = Settings(model=str(tiny_model), device="cpu", negative_threshold=tiny_threshold, batch_size=8)
    local_db = write_archive(tmp_path / "local.duckdb", rows_with_blanks())
    ray_db = tmp_path / "ray.duckdb"
    shutil.copy(local_db, ray_db)
    local = scan(local_db, settings, as_of=AS_OF, classifier=load_classifier(str(tiny_model), device="cpu"),
                 progress=False)
    # 30 messages a pending file: four tasks over two actors
    released.clear()
    result = scan_ray(ray_db, settings, as_of=AS_OF, progress=False,
                      options=RayOptions(workers=2, rows_per_task=30, token_budget=40))
    # The driver lets DuckDB's cached blocks go after the export and after the load.
    assert len(released) == 2

    assert (result.messages_scored, result.messages_skipped, result.users) == (118, 2, 12)
    assert (result.model_id, result.users_flagged) == (local.model_id, local.users_flagged)
    assert 0 < result.users_flagged < result.users
    got, want = scores(ray_db), scores(local_db)
    assert got.keys() == want.keys() and len(got) == 118
    assert [got[m][1] for m in sorted(got)] == [want[m][1] for m in sorted(want)]
    np.testing.assert_allclose([got[m][0] for m in sorted(got)], [want[m][0] for m in sorted(want)], atol=1e-5)
    assert flags(ray_db, result.run_id) == flags(local_db, local.run_id)
    assert table(ray_db, "SELECT message_id, reason FROM screener_skipped ORDER BY 1") == \
        table(local_db, "SELECT message_id, reason FROM screener_skipped ORDER BY 1")
    assert not os.listdir(str(ray_db) + ".ray")

    # the rerun goes through the command line
    again = CliRunner().invoke(main, [
        "scan", str(ray_db), "--engine", "ray", "--ray-workers", "2", "--model", str(tiny_model), "--device", "cpu",
        "--threshold", str(tiny_threshold), "--as-of", AS_OF.isoformat(), "--json", "--no-progress"])
    assert again.exit_code == 0, again.output
    summary = json.loads(again.stdout)
    assert summary["messages_scored"] == 0 and summary["users_flagged"] == result.users_flagged
    assert table(ray_db, "SELECT count(*), count(DISTINCT message_id) FROM screener_scores") == [(118, 118)]
    assert table(ray_db, "SELECT status FROM screener_runs ORDER BY run_id") == [("completed",), ("completed",)]


class DiesOnce(KeywordClassifier):
    """Kills its worker process in the middle of the first batch any worker scores (a marker file says whether
    that has happened), as an out-of-memory kill or a lost node would."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def predict_proba(self, texts):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().predict_proba(texts)


@needs_ray
def test_worker_killed_mid_batch_is_replaced_and_each_message_is_scored_once(ray_cluster, tmp_path):
    db = write_archive(tmp_path / "messages.duckdb", generated_rows())
    marker = str(tmp_path / "died")
    result = scan_ray(db, Settings(), as_of=AS_OF, progress=False,
                      options=RayOptions(workers=2, rows_per_task=30),
                      loader=lambda name, device: DiesOnce(marker))
    assert os.path.exists(marker)
    assert result.messages_scored == 120
    assert table(db, "SELECT count(*), count(DISTINCT message_id), count(DISTINCT run_id) FROM screener_scores") \
        == [(120, 120, 1)]
    local = scan(write_archive(tmp_path / "local.duckdb", generated_rows()), Settings(), as_of=AS_OF,
                 classifier=KeywordClassifier(), progress=False)
    assert flags(db, result.run_id) == flags(tmp_path / "local.duckdb", local.run_id)


@needs_ray
def test_score_files_left_by_a_stopped_driver_are_loaded_not_scored_again(ray_cluster, tmp_path):
    db = write_archive(tmp_path / "messages.duckdb", generated_rows())
    model_id = KeywordClassifier().model_id
    leftover = tmp_path / "work" / f"model={model_id}" / "run=7" / "scores"
    leftover.mkdir(parents=True)
    # p_negative 0.5 is a value the keyword classifier never gives: it shows the file's score was kept
    pq.write_table(pa.table({
        "message_id": ["m000000", "m000001"], "model_id": [model_id] * 2,
        "p_negative": pa.array([0.5, 0.5], pa.float32()), "label": ["negative"] * 2,
        "scored_at": pa.array([AS_OF] * 2, pa.timestamp("us", tz="UTC")), "run_id": pa.array([7, 7], pa.int64()),
    }), leftover / "0123.parquet")
    result = scan_ray(db, Settings(), as_of=AS_OF, progress=False,
                      options=RayOptions(workers=1, work_dir=str(tmp_path / "work")), loader=keyword_loader)
    assert result.messages_scored == 120
    assert table(db, "SELECT message_id, p_negative, run_id FROM screener_scores WHERE p_negative = 0.5 "
                     "ORDER BY 1") == [("m000000", 0.5, 7), ("m000001", 0.5, 7)]
    assert table(db, "SELECT count(*), count(DISTINCT message_id) FROM screener_scores") == [(120, 120)]
    assert not (tmp_path / "work" / f"model={model_id}").exists()


@needs_ray
@needs_moto
def test_archive_and_work_folder_in_s3_give_the_local_result(ray_cluster, s3_server, tmp_path):
    import pyarrow.fs as pafs

    rows = generated_rows()
    archive = pa.table({"message_id": [r[0] for r in rows], "user_id": [r[1] for r in rows],
                        "sent_at": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
                        "text": [r[3] for r in rows]})
    s3 = pafs.S3FileSystem(endpoint_override=s3_server, access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("screener-test")
    pq.write_table(archive.slice(0, 70), "screener-test/archive/day=1/part-0.parquet", filesystem=s3)
    pq.write_table(archive.slice(70), "screener-test/archive/day=2/part-0.parquet", filesystem=s3)

    db = tmp_path / "results.duckdb"
    result = scan_ray(db, Settings(), source="s3://screener-test/archive/*/*.parquet", as_of=AS_OF,
                      progress=False, loader=keyword_loader,
                      options=RayOptions(workers=2, rows_per_task=40, work_dir="s3://screener-test/work"))
    (tmp_path / "local").mkdir()
    pq.write_table(archive, tmp_path / "local" / "all.parquet")
    local = scan(tmp_path / "local.duckdb", Settings(), source=str(tmp_path / "local" / "all.parquet"),
                 as_of=AS_OF, classifier=KeywordClassifier(), progress=False)
    assert (result.messages_total, result.messages_scored, result.users) == (120, 120, 12)
    assert flags(db, result.run_id) == flags(tmp_path / "local.duckdb", local.run_id)
    assert scores(db) == scores(tmp_path / "local.duckdb")
    assert table(db, "SELECT source FROM screener_runs") == [("s3://screener-test/archive/*/*.parquet",)]
    # the work folder of a completed run is gone from the bucket
    left = s3.get_file_info(pafs.FileSelector("screener-test/work", recursive=True, allow_not_found=True))
    assert [f.path for f in left if f.type == pafs.FileType.File] == []
    # the report of that run reads its evidence back from the bucket
    out = CliRunner().invoke(main, ["report", str(db), "--run", str(result.run_id), "--format", "json",
                                    "-o", str(tmp_path / "report.json")])
    assert out.exit_code == 0, out.output
    report = json.loads((tmp_path / "report.json").read_text())
    assert [u["user_id"] for u in report["flagged"]] == [f[0] for f in flags(db, result.run_id)]
