"""The statement files in sql/: headers, binding, unique names across folders, every name the code uses exists and
every file is used, and the files are found from a copied tree and shipped by the wheel's package data."""

import ast
import fnmatch
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import duckdb
import pytest

from screener import queries
from screener.settings import FLAG_RULES
from screener.store import migrations

ROOT = Path(__file__).resolve().parents[1]
# Methods that take a statement name as their first argument: queries.load / description / with_identifiers and
# Store.run / Store.scalar / Store.stream.
NAME_TAKING = {"load", "description", "with_identifiers", "run", "scalar", "stream"}
NAME = re.compile(r"^[a-z0-9_]+$")


def names_in_code() -> dict[str, list[str]]:
    """Statement names written as string literals in calls of NAME_TAKING methods anywhere in screener/, with the
    places they occur."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / "screener").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in NAME_TAKING
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)
                    and NAME.match(node.args[0].value)):
                found.setdefault(node.args[0].value, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_sql_file_loads_with_name_header_and_description():
    names = queries.names()
    assert len(names) >= 30
    for name in names:
        text = queries.load(name)
        lines = text.splitlines()
        assert lines[0] == f"-- name: {name}"
        assert lines[1].startswith("-- ") and len(lines[1]) > 10, f"{name}: second line must describe the query"
        assert queries.description(name) == lines[1][3:].strip()


def test_files_are_grouped_in_subfolders_and_none_is_left_at_the_top():
    folders = {p.parent.name for p in (ROOT / "sql").rglob("*.sql")}
    assert folders == {"runs", "scores", "flags", "source", "schema", "report", "migrations", "rules", "purge",
                       "explain", "decisions"}
    assert queries.names("runs") == ["run_abort", "run_finish", "run_get", "run_insert", "run_latest",
                                     "run_next_id", "run_previous", "runs_mark_interrupted"]
    assert queries.names("") == []


def test_sql_files_bind_values_and_never_use_python_formatting():
    for name in queries.names():
        body = "\n".join(l for l in queries.load(name).splitlines() if not l.startswith("--"))
        assert "%s" not in body and "?" not in body, name
        # {slot} only for identifiers filled from an allow-list
        for slot in re.findall(r"\{([^}]*)\}", body):
            assert slot in {"schema", "table", "message_id", "user_id", "sent_at", "text"}, (name, slot)


def test_every_statement_name_the_code_uses_exists():
    used = names_in_code()
    assert {"run_insert", "flags_insert", "user_stats", "source_view", "pending_messages"} <= set(used)
    missing = {name: where for name, where in used.items() if name not in queries.names()}
    assert missing == {}


def test_every_statement_file_is_used_by_name_as_a_migration_or_as_a_flag_rule():
    by_name = set(names_in_code())
    by_folder = {name for _, name in migrations()} | set(FLAG_RULES)
    assert set(queries.names("migrations")) | set(queries.names("rules")) == by_folder
    unused = set(queries.names()) - by_name - by_folder
    assert unused == set()


def test_two_files_with_one_name_in_different_folders_are_refused(tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "scores").mkdir()
    (tmp_path / "runs" / "same.sql").write_text("-- name: same\n-- One.\nSELECT 1;\n")
    (tmp_path / "scores" / "other.sql").write_text("-- name: other\n-- Two.\nSELECT 2;\n")
    found = queries.statements(tmp_path)
    assert {name: s.path for name, s in found.items()} == {"same": "sql/runs/same.sql", "other": "sql/scores/other.sql"}
    (tmp_path / "scores" / "same.sql").write_text("-- name: same\n-- Three.\nSELECT 3;\n")
    with pytest.raises(ValueError, match="two SQL statements are named 'same'"):
        queries.statements(tmp_path)


def test_every_migration_applies_in_order_to_an_empty_database():
    con = duckdb.connect()
    for _, name in migrations():
        con.execute(queries.load(name))
    assert {r[0] for r in con.execute(queries.load("tables_list")).fetchall()} >= {
        "screener_runs", "screener_scores", "screener_flags", "screener_meta", "screener_skipped"}
    con.execute(queries.load("001_create_tables"))  # version 1 only creates what is absent


def test_identifier_outside_allow_list_is_rejected_and_allowed_one_is_quoted():
    allowed = {"table": {"msgs"}, "message_id": {"id", "user"}, "user_id": {"id", "user"},
               "sent_at": {"t"}, "text": {"body"}}
    sql = queries.with_identifiers("source_rows_view", allowed, table="msgs", message_id="id", user_id="user",
                                   sent_at="t", text="body")
    assert 'FROM "msgs"' in sql and 'CAST("user" AS VARCHAR)' in sql
    with pytest.raises(queries.UnknownIdentifier):
        queries.with_identifiers("source_rows_view", allowed, table='msgs"; DROP TABLE x; --', message_id="id",
                                 user_id="user", sent_at="t", text="body")


def test_quote_identifier_doubles_embedded_quotes():
    assert queries.quote_identifier('we"ird') == '"we""ird"'


def test_unknown_statement_name_is_a_key_error():
    with pytest.raises(KeyError):
        queries.load("no_such_query")


def test_package_data_ships_every_sql_file_in_every_subfolder():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["setuptools"]
    assert config["package-dir"]["screener.sql"] == "sql"
    patterns = config["package-data"]["screener.sql"]
    files = {p.relative_to(ROOT / "sql").as_posix() for p in (ROOT / "sql").rglob("*.sql")}
    shipped = {f for f in files for pattern in patterns
               if fnmatch.fnmatch(f, pattern) or (pattern.startswith("**/") and fnmatch.fnmatch(f, pattern[3:]))}
    assert shipped == files


def test_a_copied_tree_without_symlinks_reads_its_own_sql_folder(tmp_path):
    tree = tmp_path / "copy"
    shutil.copytree(ROOT / "screener", tree / "screener", symlinks=False,
                    ignore=shutil.ignore_patterns("models", "demo_data", "__pycache__"))
    shutil.copytree(ROOT / "sql", tree / "sql", symlinks=False, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    script = (
        "import screener, sys\n"
        "from screener import queries\n"
        "from screener.settings import Settings\n"
        "from screener.store import SCHEMA_VERSION, Store\n"
        "with Store(sys.argv[1], Settings()) as store:\n"
        "    store.ensure_schema()\n"
        "    print(screener.__file__, queries.sql_root(), len(queries.names()), store.schema_version(),\n"
        "          SCHEMA_VERSION)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r.duckdb")], cwd=tree, check=True,
                         capture_output=True, text=True, env={"PYTHONPATH": str(tree), "PATH": ""}).stdout.split()
    assert out[0] == str(tree / "screener" / "__init__.py")
    assert out[1] == str(tree / "sql")
    assert int(out[2]) == len(queries.names())
    assert out[3] == out[4] == str(migrations()[-1][0])
