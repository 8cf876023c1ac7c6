import re

import duckdb
import pytest

from screener import queries


def test_every_sql_file_loads_with_name_header_and_description():
    names = queries.names()
    assert len(names) >= 20
    for name in names:
        text = queries.load(name)
        lines = text.splitlines()
        assert lines[0] == f"-- name: {name}"
        assert lines[1].startswith("-- ") and len(lines[1]) > 10, f"{name}: second line must describe the query"


def test_sql_files_bind_values_and_never_use_python_formatting():
    for name in queries.names():
        body = "\n".join(l for l in queries.load(name).splitlines() if not l.startswith("--"))
        assert "%s" not in body and "?" not in body, name
        # {slot} only for identifiers filled from an allow-list
        for slot in re.findall(r"\{([^}]*)\}", body):
            assert slot in {"table", "message_id", "user_id", "sent_at", "text"}, (name, slot)


def test_every_parameterless_statement_parses_in_duckdb():
    con = duckdb.connect()
    con.execute(queries.load("schema_create"))
    con.execute(queries.load("schema_create"))  # idempotent
    assert {r[0] for r in con.execute(queries.load("tables_list")).fetchall()} >= {
        "screener_runs", "screener_scores", "screener_flags", "screener_meta", "screener_skipped"}


def test_identifier_outside_allow_list_is_rejected_and_allowed_one_is_quoted():
    allowed = {"table": {"msgs"}, "message_id": {"id", "user"}, "user_id": {"id", "user"},
               "sent_at": {"t"}, "text": {"body"}}
    sql = queries.with_identifiers("source_view", allowed, table="msgs", message_id="id", user_id="user",
                                   sent_at="t", text="body")
    assert 'FROM "msgs"' in sql and 'CAST("user" AS VARCHAR)' in sql
    with pytest.raises(queries.UnknownIdentifier):
        queries.with_identifiers("source_view", allowed, table='msgs"; DROP TABLE x; --', message_id="id",
                                 user_id="user", sent_at="t", text="body")


def test_quote_identifier_doubles_embedded_quotes():
    assert queries.quote_identifier('we"ird') == '"we""ird"'


def test_unknown_statement_name_is_a_key_error():
    with pytest.raises(KeyError):
        queries.load("no_such_query")
