import pytest

from screener.errors import ConfigError
from screener.settings import Settings, load_settings


def test_defaults_are_the_documented_flag_rule(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert (s.min_ratio, s.min_lower_bound, s.min_messages, s.confidence_z, s.short_window_days,
            s.long_window_days) == (0.25, 0.125, 5, 1.96, 7, 30)


def test_flag_rule_settings_come_from_the_toml_file_into_the_rule_parameters(tmp_path):
    from screener import rules
    from screener.settings import FLAG_RULES

    path = tmp_path / "s.toml"
    path.write_text("[flag]\nmin_ratio = 0.8\nmin_messages = 2\nshort_window_days = 3\n")
    params = rules.rule_params("high_negative_share", load_settings(path))
    assert FLAG_RULES["high_negative_share"] == ("min_messages", "min_ratio", "min_lower_bound", "short_window_days")
    assert params == {"rule": "high_negative_share", "priority": 0, "min_messages": 2, "min_ratio": 0.8,
                      "min_lower_bound": 0.125, "short_window_days": 3}


def test_toml_overrides_defaults_and_flags_override_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "screener.toml").write_text('[flag]\nmin_ratio = 0.7\nmin_messages = 3\n[input]\ntable = "msgs"\n')
    s = load_settings(min_messages=9, table=None)
    assert (s.min_ratio, s.min_messages, s.table) == (0.7, 9, "msgs")


def test_integer_accepted_where_float_expected(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("min_ratio = 1\n")
    assert load_settings(path).min_ratio == 1.0


@pytest.mark.parametrize("content, fragment", [
    ("min_ratoi = 0.5\n", "unknown setting"),
    ('min_messages = "five"\n', "min_messages must be int"),
    ("min_ratio = 1.5\n", "between 0 and 1"),
    ("short_window_days = 0\n", "short_window_days must be between 1 and 3660"),
    ("min_ratio = [\n", "not valid TOML"),
])
def test_bad_config_file_gives_config_error_naming_the_problem(tmp_path, content, fragment):
    path = tmp_path / "s.toml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=fragment):
        load_settings(path)


def test_missing_explicit_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_example_config_file_loads_and_matches_defaults():
    from pathlib import Path

    example = Path(__file__).resolve().parents[1] / "examples" / "screener.toml"
    assert load_settings(example) == Settings()


@pytest.mark.parametrize("limit, expected", [("256MB", 256 * 10**6), ("4GiB", 4 * 2**30), ("1.5 GB", 1_500_000_000)])
def test_memory_limit_sizes_parse_in_duckdb_units(limit, expected):
    from screener.settings import memory_bytes

    assert memory_bytes(limit) == expected


def test_bad_memory_limit_is_a_config_error_naming_the_setting():
    with pytest.raises(ConfigError, match="memory_limit must be a size"):
        Settings(memory_limit="lots")


def test_duckdb_threads_follow_the_memory_limit_not_the_core_count(monkeypatch):
    # One thread per core would cut a small memory limit into shares too small for the aggregation.
    monkeypatch.setattr("os.cpu_count", lambda: 32)
    assert Settings(memory_limit="256MB").duckdb_threads() == 3  # 256e6 bytes hold three whole 64 MiB shares
    assert Settings(memory_limit="8GB").duckdb_threads() == 32
    assert Settings(memory_limit="16MiB").duckdb_threads() == 1
    assert Settings(memory_limit="256MB", threads=12).duckdb_threads() == 12


def test_store_connection_uses_the_derived_thread_count(tmp_path, monkeypatch):
    from screener.store import Store

    monkeypatch.setattr("os.cpu_count", lambda: 32)
    with Store(tmp_path / "r.duckdb", Settings(memory_limit="128MiB")) as store:
        assert store.con.execute("SELECT current_setting('threads')").fetchone()[0] == 2
