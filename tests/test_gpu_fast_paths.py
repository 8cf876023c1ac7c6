"""The GPU engine's fast paths as scan settings: defaults, screener.toml and flags, the CLI's help, a warning
where they cannot apply (an encoder model, the CPU), the typed error for float8 on a GPU without float8 units,
and the model id: float8 gets one of its own, CUDA graphs and fused kernels keep the model's."""

from __future__ import annotations

import hashlib
import json
import logging

import duckdb
import pytest
from click.testing import CliRunner

from conftest import AS_OF, generated_rows, write_archive
from screener.classifiers.gpu.fast_paths import FastPaths
from screener.cli import main
from screener.errors import ConfigError, ModelError
from screener.settings import Settings, load_settings
from test_cli import screener

GPU_SETTINGS = ("gpu_fp8", "gpu_cuda_graphs", "gpu_fused")
IGNORED = "ignored:"


# ---- settings --------------------------------------------------------------------------------------------------


def test_the_fast_paths_are_off_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = load_settings()
    assert [getattr(settings, name) for name in GPU_SETTINGS] == [False, False, False]
    assert FastPaths.of(settings) == FastPaths() and FastPaths().names() == []


def test_the_toml_file_turns_paths_on_and_flags_override_it(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[model]\ngpu_fp8 = true\ngpu_fused = true\n")
    from_file = load_settings(path)
    assert (from_file.gpu_fp8, from_file.gpu_cuda_graphs, from_file.gpu_fused) == (True, False, True)
    # None is an unset flag: the file's value stays.
    flagged = load_settings(path, gpu_fp8=False, gpu_cuda_graphs=True, gpu_fused=None)
    assert (flagged.gpu_fp8, flagged.gpu_cuda_graphs, flagged.gpu_fused) == (False, True, True)
    assert FastPaths.of(flagged) == FastPaths(fp8=False, cuda_graphs=True, fused=True)
    assert FastPaths.of(flagged).names() == ["gpu_cuda_graphs", "gpu_fused"]


@pytest.mark.parametrize("line", ["gpu_fp8 = 1", 'gpu_fp8 = "true"', "gpu_fp8 = 0.0"])
def test_a_fast_path_in_the_toml_file_must_be_true_or_false(tmp_path, line):
    path = tmp_path / "s.toml"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match="gpu_fp8 must be true or false"):
        load_settings(path)


def test_a_fast_path_setting_must_be_a_boolean():
    with pytest.raises(ConfigError, match="gpu_cuda_graphs must be true or false, got 'yes'"):
        Settings(gpu_cuda_graphs="yes")


# ---- the command line ------------------------------------------------------------------------------------------


def test_scan_help_lists_the_fast_path_flags_with_an_example():
    result = CliRunner().invoke(main, ["scan", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())  # help lines wrap anywhere
    for name in ("fp8", "cuda-graphs", "fused"):
        assert f"--gpu-{name} / --no-gpu-{name}" in text
    assert "screener scan messages.duckdb --model qwen-3way --device cuda --gpu-cuda-graphs --gpu-fused" in text
    assert "compute capability 8.9" in text and "ignored, with a warning" in text


def recorded_paths(db) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    config = json.loads(con.execute("SELECT config FROM screener_runs ORDER BY run_id DESC LIMIT 1").fetchone()[0])
    con.close()
    return {name: config[name] for name in GPU_SETTINGS}


def ignored_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if IGNORED in line]


def test_an_encoder_model_ignores_the_toml_files_paths_with_one_warning(tmp_path, tiny_model):
    db = write_archive(tmp_path / "m.duckdb", generated_rows())
    (tmp_path / "screener.toml").write_text("[model]\ngpu_fp8 = true\ngpu_cuda_graphs = true\n")
    args = ("scan", db, "--model", tiny_model, "--backend", "torch", "--as-of", AS_OF.isoformat(), "--no-progress")
    result = screener(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (line,) = ignored_lines(result.stderr)
    assert "WARNING" in line and "gpu_fp8, gpu_cuda_graphs ignored" in line
    assert "llm-labeltoken models on CUDA" in line and "'hf-seqcls' model" in line
    assert recorded_paths(db) == {"gpu_fp8": False, "gpu_cuda_graphs": False, "gpu_fused": False}
    # The flags turn off what the file turns on: nothing is left to ignore.
    quiet = screener(*args, "--no-gpu-fp8", "--no-gpu-cuda-graphs", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert ignored_lines(quiet.stderr) == []


# ---- LLM label-token models ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A model folder of the tiny random-weight Llama of the engine's tests (its base a local folder)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_llm_engine import tiny_model, tiny_tokenizer

    folder = tmp_path_factory.mktemp("llm") / "tiny-llm"
    tiny_model(0).save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    (folder / "screener_model.json").write_text(json.dumps({"kind": "llm-labeltoken", "base": "base",
                                                            "name": "tiny-llm"}))
    return folder


def test_on_the_cpu_an_llm_scan_ignores_the_flags_with_one_warning_and_keeps_its_model_id(tmp_path, tiny_llm):
    plain_db = write_archive(tmp_path / "plain.duckdb", generated_rows(n_users=2, per_user=3))
    fast_db = write_archive(tmp_path / "fast.duckdb", generated_rows(n_users=2, per_user=3))
    common = ("--model", tiny_llm, "--device", "cpu", "--as-of", AS_OF.isoformat(), "--no-progress", "--json")
    plain = screener("scan", plain_db, *common, cwd=tmp_path)
    fast = screener("scan", fast_db, *common, "--gpu-fp8", "--gpu-cuda-graphs", "--gpu-fused", cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert fast.returncode == 0, fast.stderr
    assert ignored_lines(plain.stderr) == []
    (line,) = ignored_lines(fast.stderr)
    assert "gpu_fp8, gpu_cuda_graphs, gpu_fused ignored" in line and "run on CUDA" in line and "on cpu" in line
    assert json.loads(fast.stdout)["model_id"] == json.loads(plain.stdout)["model_id"]
    assert json.loads(fast.stdout)["messages_scored"] == 6
    assert recorded_paths(fast_db) == {"gpu_fp8": False, "gpu_cuda_graphs": False, "gpu_fused": False}


def test_the_registry_warns_once_when_an_llm_model_runs_on_the_cpu(tiny_llm, caplog):
    from screener.classifiers.llm import LabelTokenClassifier
    from screener.classifiers.registry import load_classifier

    with caplog.at_level(logging.WARNING, logger="screener"):
        clf = load_classifier(str(tiny_llm), device="cpu", fast_paths=FastPaths(fused=True))
    assert isinstance(clf, LabelTokenClassifier)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("screener")] == [
        "gpu_fused ignored: the GPU engine's fast paths run on CUDA, and this model runs on cpu"]


# ---- float8 on a GPU without float8 matrix units ---------------------------------------------------------------


def fake_gpu(monkeypatch, capability, name):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


def test_fp8_on_a_gpu_below_compute_capability_8_9_is_a_model_error_saying_what_to_do(monkeypatch):
    from screener.classifiers.gpu import fp8

    fake_gpu(monkeypatch, (8, 0), "NVIDIA A100-SXM4-80GB")
    with pytest.raises(ModelError) as error:
        fp8.check_device("cuda:0")
    message = str(error.value)
    assert "compute capability 8.9 or later" in message  # expected
    assert "NVIDIA A100-SXM4-80GB (compute capability 8.0)" in message  # found
    assert "--no-gpu-fp8" in message and "gpu_fp8 = false" in message  # what to do
    assert error.value.exit_code == 5
    fake_gpu(monkeypatch, (9, 0), "NVIDIA H200")
    fp8.check_device("cuda:0")
    fp8.check_device("cpu")


def test_the_loader_refuses_fp8_on_such_a_gpu_before_loading_any_weights(monkeypatch, tiny_llm):
    from screener.classifiers import llm
    from screener.classifiers.gpu import loader

    fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    monkeypatch.setattr(loader, "resolve_device", lambda device: device)

    def no_loading(*args, **kwargs):
        raise AssertionError("weights were loaded before the GPU was checked")

    monkeypatch.setattr(llm, "load_model_and_tokenizer", no_loading)
    manifest = json.loads((tiny_llm / "screener_model.json").read_text())
    with pytest.raises(ModelError, match=r"Tesla T4 \(compute capability 7.5\)"):
        loader.load(tiny_llm, manifest, "cuda", fast_paths=FastPaths(fp8=True))


# ---- model ids -------------------------------------------------------------------------------------------------


def test_fp8_scores_get_a_model_id_of_their_own_and_graphs_and_fused_kernels_keep_it():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from test_llm_engine import tiny_model, tiny_tokenizer

    from screener.classifiers.gpu import fp8
    from screener.classifiers.gpu.runner import LabelTokenEngine
    from screener.prompt import label_token_ids

    torch.set_num_threads(1)
    tokenizer = tiny_tokenizer()
    label_ids = label_token_ids(tokenizer)

    def engine(**paths):
        return LabelTokenEngine(tiny_model(0, scale=0.12), tokenizer, label_ids, model_id="m", producer="thread",
                                **FastPaths(**paths).engine_options())

    expected = hashlib.sha256(json.dumps({"kind": "llm-labeltoken-engine", "model": "m", "fp8": fp8.SCHEME},
                                         sort_keys=True).encode()).hexdigest()[:16]
    float8 = engine(fp8=True)
    assert float8.model_id == fp8.scored_model_id("m") == expected != "m"
    assert float8.fast_paths == FastPaths(fp8=True)
    assert engine(cuda_graphs=True, fused=True).model_id == "m"
    # Off CUDA the graphs do not run (the engine runs eagerly); the fused options fall back to torch and stay on.
    assert engine(cuda_graphs=True, fused=True).fast_paths == FastPaths(fused=True)
    # Without a given id, the engine's own fingerprint id is the one float8 derives from.
    own = LabelTokenEngine(tiny_model(0, scale=0.12), tokenizer, label_ids, producer="thread")
    own_fp8 = LabelTokenEngine(tiny_model(0, scale=0.12), tokenizer, label_ids, producer="thread", fp8=True)
    assert own_fp8.model_id == fp8.scored_model_id(own.model_id) != own.model_id


def test_the_loader_builds_the_engine_with_the_paths_it_is_given(tiny_llm):
    import torch

    from screener.classifiers.gpu import fp8
    from screener.classifiers.gpu.loader import load_engine
    from screener.classifiers.gpu.runner import LabelTokenEngine

    torch.set_num_threads(1)
    manifest = json.loads((tiny_llm / "screener_model.json").read_text())
    engine = load_engine(tiny_llm, manifest, "cpu", name="tiny-llm", model_id="m",
                         fast_paths=FastPaths(fp8=True, fused=True))
    assert isinstance(engine, LabelTokenEngine)
    assert (engine.fp8, engine.fused_attention, engine.fused_rotary, engine.fused_mlp) == (True,) * 4
    assert engine.fast_paths == FastPaths(fp8=True, fused=True) and engine.model_id == fp8.scored_model_id("m")


# ---- on a CUDA GPU ---------------------------------------------------------------------------------------------


def cuda_capability() -> tuple[int, int] | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.cuda.get_device_capability() if torch.cuda.is_available() else None


def triton_present() -> bool:
    import importlib.util

    return importlib.util.find_spec("triton") is not None


def scores(db) -> dict[str, float]:
    con = duckdb.connect(str(db), read_only=True)
    rows = con.execute("SELECT message_id, p_negative FROM screener_scores").fetchall()
    con.close()
    return dict(rows)


@pytest.mark.skipif(cuda_capability() is None or not triton_present(), reason="needs a CUDA GPU and Triton")
@pytest.mark.parametrize("flags", [("--gpu-fused",), ("--gpu-cuda-graphs",), ("--gpu-cuda-graphs", "--gpu-fused"),
                                   ("--gpu-fp8",), ("--gpu-fp8", "--gpu-cuda-graphs")])
def test_on_cuda_each_path_runs_is_recorded_and_scores_like_the_plain_engine(tmp_path, tiny_llm, flags):
    if "--gpu-fp8" in flags and cuda_capability() < (8, 9):
        pytest.skip("float8 needs compute capability 8.9")
    rows = generated_rows(n_users=4, per_user=40)
    plain_db, fast_db = (write_archive(tmp_path / f"{name}.duckdb", rows) for name in ("plain", "fast"))
    common = ("--model", tiny_llm, "--device", "cuda", "--as-of", AS_OF.isoformat(), "--no-progress", "--json")
    plain = screener("scan", plain_db, *common, cwd=tmp_path)
    fast = screener("scan", fast_db, *common, *flags, cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert fast.returncode == 0, fast.stderr
    assert ignored_lines(fast.stderr) == []
    assert recorded_paths(fast_db) == {f"gpu_{f[6:].replace('-', '_')}": f in flags for f in
                                       ("--gpu-fp8", "--gpu-cuda-graphs", "--gpu-fused")}
    summary, fast_summary = json.loads(plain.stdout), json.loads(fast.stdout)
    assert fast_summary["messages_scored"] == summary["messages_scored"] == len(rows)
    assert (fast_summary["model_id"] == summary["model_id"]) == ("--gpu-fp8" not in flags)
    expected, got = scores(plain_db), scores(fast_db)
    assert got.keys() == expected.keys()
    # bf16 paths agree with the plain bf16 engine to its rounding; float8 moves probabilities more.
    tolerance = 0.15 if "--gpu-fp8" in flags else 0.03
    assert max(abs(got[k] - expected[k]) for k in expected) < tolerance
