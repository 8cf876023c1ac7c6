"""Issue 15, item 5: each failure ends with its documented exit code and a message that says what was expected, what
was found and what to do, never a traceback with exit 1."""

import ctypes
import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from conftest import AS_OF, KeywordClassifier, generated_rows, write_archive
from screener.classifiers import hf
from screener.classifiers.registry import load_classifier
from screener.cli import main
from screener.errors import InputError, ModelError
from screener.scan import scan
from screener.settings import Settings

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, PR_CAPBSET_DROP = 1, 2, 24


def screener(*args, cwd=None, **kw):
    result = subprocess.run([sys.executable, "-m", "screener.cli", *args], capture_output=True, cwd=cwd, timeout=300,
                            env=ENV, **kw)
    result.stderr = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in result.stderr, result.stderr
    return result


def as_file_owner():
    """preexec_fn: permissions apply to this child even as root (the capabilities that override them dropped)."""
    if os.geteuid() != 0:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def parquet_rows(path, **columns):
    data = {"message_id": ["m1"], "user_id": ["u"], "sent_at": pa.array([AS_OF - timedelta(hours=1)],
                                                                         pa.timestamp("us", tz="UTC")),
            "text": ["bad"]}
    data.update(columns)
    pq.write_table(pa.table({k: v for k, v in data.items() if v is not None}), path)
    return path


def test_results_database_in_a_read_only_folder_exits_7(tmp_path, tiny_model):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = write_archive(folder / "m.duckdb", generated_rows(n_users=2, per_user=3))
    parquet = parquet_rows(tmp_path / "a.parquet")
    folder.chmod(0o555)
    try:
        same_file = screener("scan", str(db), "--model", str(tiny_model), preexec_fn=as_file_owner)
        assert same_file.returncode == 7, same_file.stderr
        assert "may not write in its folder" in same_file.stderr
        new_db = screener("scan", str(parquet), "--db", str(folder / "r.duckdb"), "--model", str(tiny_model),
                          preexec_fn=as_file_owner)
        assert new_db.returncode == 7, new_db.stderr
        assert not (folder / "r.duckdb").exists()
    finally:
        folder.chmod(0o755)


def test_reading_results_in_a_read_only_folder_still_works(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    db = write_archive(folder / "m.duckdb", generated_rows())
    flagged = scan(db, Settings(), as_of=AS_OF, classifier=KeywordClassifier(), progress=False).users_flagged
    folder.chmod(0o555)
    try:
        result = screener("flags", str(db), "--json", preexec_fn=as_file_owner)
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)) == flagged > 0
    finally:
        folder.chmod(0o755)


def test_truncated_model_weights_exit_5(tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    result = screener("scan", str(db), "--model", str(model), "--no-progress")
    assert result.returncode == 5, result.stderr
    assert "cannot load the checkpoint" in result.stderr and "copied again" in result.stderr


def test_truncated_adapter_weights_are_a_model_error(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(ModelError, match="cannot read .*adapter_model.safetensors"):
        hf.merge_lora(None, adapter)


def test_truncated_llm_base_weights_are_a_model_error(tmp_path):
    from test_llm_classifier import make_adapter_model

    from screener.classifiers.llm import load_model_and_tokenizer

    folder, base = make_adapter_model(tmp_path)
    weights = base / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    manifest = json.loads((folder / "screener_model.json").read_text())
    with pytest.raises(ModelError, match="cannot load the model .*copied again"):
        load_model_and_tokenizer(folder, manifest, device="cpu")
    with pytest.raises(ModelError, match="max_text_tokens must be a positive integer"):
        load_model_and_tokenizer(folder, {**manifest, "max_text_tokens": "many"}, device="cpu")


def test_model_max_length_above_the_position_limit_exits_5_at_load(tmp_path, tiny_model):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    manifest = json.loads((model / "screener_model.json").read_text())
    (model / "screener_model.json").write_text(json.dumps({**manifest, "max_length": 128}))
    with pytest.raises(ModelError, match="max_length is 128 tokens, but the model .* has positions for 64"):
        load_classifier(str(model), device="cpu")
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    result = screener("scan", str(db), "--model", str(model), "--no-progress")
    assert result.returncode == 5, result.stderr
    assert "Set max_length to 64 or less" in result.stderr


def test_position_limit_counts_the_padding_offset_of_roberta_like_models():
    pytest.importorskip("transformers")
    from transformers import BertConfig, BertModel, RobertaConfig, RobertaModel

    small = dict(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    assert hf.position_limit(BertModel(BertConfig(max_position_embeddings=40, **small))) == 40
    assert hf.position_limit(RobertaModel(RobertaConfig(max_position_embeddings=42, pad_token_id=1, **small))) == 40


@pytest.mark.parametrize("as_of", ["0001-01-01T00:00:00+14:00", "0001-01-08T00:00:00+00:00",
                                   "9999-12-31T23:59:59-14:00", "1899-12-31T23:59:59Z"])
def test_as_of_outside_the_representable_range_exits_2(tmp_path, as_of):
    db = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    result = CliRunner().invoke(main, ["scan", str(db), "--as-of", as_of])
    assert result.exit_code == 2, result.output
    assert "expected an ISO 8601 time from 1900-01-01 to 9000-01-01 UTC" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_path_with_a_non_utf8_byte_exits_3(tmp_path):
    good = write_archive(tmp_path / "m.duckdb", generated_rows(n_users=1, per_user=2))
    bad = os.fsencode(tmp_path) + b"/m\xff.duckdb"
    os.rename(good, bad)
    parquet = parquet_rows(tmp_path / "a.parquet")
    for args in ([b"scan", bad], [b"flags", bad], [b"scan", os.fsencode(parquet), b"--db", bad],
                 [b"scan", os.fsencode(tmp_path) + b"/\xff*.parquet", b"--db", os.fsencode(tmp_path / "r.duckdb")]):
        result = screener(*args)
        assert result.returncode == 3, (args, result.stderr)
        assert "not UTF-8" in result.stderr
    assert not (tmp_path / "r.duckdb").exists()


def two_schema_archive(path, main_table: bool = True):
    con = duckdb.connect(str(path))
    con.execute("CREATE SCHEMA other")
    # The same name in two schemas, with different columns: the check must read the one the scan reads.
    con.execute("CREATE TABLE other.messages (message_id VARCHAR, user_id VARCHAR, sent_at TIMESTAMPTZ, "
                "text VARCHAR, extra INTEGER)")
    con.execute("INSERT INTO other.messages VALUES ('o1', 'u', $t, 'bad', 1), ('o2', 'u', $t, 'bad', 2)",
                {"t": AS_OF - timedelta(hours=1)})
    if main_table:
        con.execute("CREATE TABLE main.messages (message_id VARCHAR, user_id VARCHAR, sent_at TIMESTAMPTZ, "
                    "text VARCHAR)")
        con.execute("INSERT INTO main.messages VALUES ('m1', 'u', $t, 'bad')", {"t": AS_OF - timedelta(hours=1)})
    con.close()
    return path


def run(db, **settings):
    return scan(db, Settings(**settings), as_of=AS_OF, classifier=KeywordClassifier(), progress=False)


def test_messages_table_in_two_schemas_reads_the_one_duckdb_resolves(tmp_path):
    db = two_schema_archive(tmp_path / "m.duckdb")
    assert run(db).messages_total == 1
    other = two_schema_archive(tmp_path / "o.duckdb")
    assert run(other, table="other.messages").messages_total == 2
    qualified = two_schema_archive(tmp_path / "q.duckdb")
    assert run(qualified, table="q.other.messages").messages_total == 2


def test_messages_table_only_in_another_schema_exits_3_naming_it(tmp_path):
    db = two_schema_archive(tmp_path / "m.duckdb", main_table=False)
    with pytest.raises(InputError, match=r"no table 'messages' in the main schema.*; found other\.messages\. "
                                          r"Name one with its schema, e\.g\. --table other\.messages"):
        run(db)
    result = screener("scan", str(db), "--table", "nowhere.messages")
    assert result.returncode == 3 and "no table 'nowhere.messages'; found other.messages" in result.stderr


def test_a_folder_given_as_the_archive_says_it_is_a_folder(tmp_path):
    (tmp_path / "archive").mkdir()
    result = screener("scan", str(tmp_path / "archive"))
    assert result.returncode == 3, result.stderr
    assert "is a folder" in result.stderr and "does not exist" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive"]


def test_a_glob_that_matches_nothing_creates_nothing(tmp_path):
    result = screener("scan", str(tmp_path / "nothing" / "*.parquet"), "--db", str(tmp_path / "r.duckdb"))
    assert result.returncode == 3, result.stderr
    assert "no Parquet files match" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_parquet_without_the_expected_columns_creates_nothing(tmp_path):
    parquet_rows(tmp_path / "a.parquet", text=None)
    with pytest.raises(InputError, match="missing column"):
        scan(tmp_path / "r.duckdb", Settings(), source=str(tmp_path / "a.parquet"), as_of=AS_OF,
             classifier=KeywordClassifier(), progress=False)
    assert not (tmp_path / "r.duckdb").exists()


def test_invalid_utf8_in_a_parquet_text_column_exits_3(tmp_path, tiny_model):
    text = pa.Array.from_buffers(pa.string(), 1, [None, pa.py_buffer(b"\x00\x00\x00\x00\x05\x00\x00\x00"),
                                                  pa.py_buffer(b"\xff\xfebad")])
    parquet_rows(tmp_path / "a.parquet", text=text)
    result = screener("scan", str(tmp_path / "a.parquet"), "--db", str(tmp_path / "r.duckdb"), "--model",
                      str(tiny_model), "--no-progress")
    assert result.returncode == 3, result.stderr
    assert "could not be read" in result.stderr and "UTF" in result.stderr
