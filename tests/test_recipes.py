"""Recipe files: every shipped one loads, each says how to run it, and mistakes are refused by name; the training
package has no import circle and the scan path does not reach it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from screener.errors import ConfigError
from training.recipes import (ENCODER, LLM_LORA, NUMBER, RECIPES_DIR, Key, Range, RecipeSchema, for_trainer,
                              load_recipe, override, recipe_names, validate)

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", recipe_names())
def test_every_recipe_file_loads_and_starts_with_how_to_run(name):
    recipe = load_recipe(name)
    assert recipe["name"] == name and recipe["kind"] in ("llm-lora", "encoder")
    lines = (RECIPES_DIR / f"{name}.toml").read_text().splitlines()
    header = lines[:next(i for i, line in enumerate(lines) if not line.startswith("#"))]
    assert header, "a recipe file starts with a comment header"
    assert any("how to run" in line.lower() for line in header)
    assert any("screener train" in line and f"--recipe {name}" in line for line in header)


def test_the_llm_recipes_are_shipped():
    assert {"paper", "full"} <= set(recipe_names())


def test_paper_recipe_has_the_papers_hyperparameters():
    r = load_recipe("paper")
    assert (r["learning_rate"], r["batch_size"], r["grad_accum"], r["max_steps"], r["warmup_steps"]) == \
        (0.002, 2, 4, 60, 5)
    assert (r["weight_decay"], r["lora_dropout"], r["precision"], r["gradient_checkpointing"]) == \
        (0.01, 0.0, "fp16", True)
    assert (r["optimizer"], r["objective"]) == ("adamw", "causal-lm")


def test_full_recipe_is_two_epochs_of_label_token_loss_with_graphed_steps():
    r = load_recipe("full")
    assert (r["objective"], r["batch_size"], r["learning_rate"], r["epochs"], r["max_steps"]) == \
        ("label-token", 64, 2e-4, 2.0, 0)
    assert r["cuda_graphs"] is True
    assert set(r["target_modules"]) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                        "down_proj"}


def write(tmp_path, body: str):
    path = tmp_path / "r.toml"
    path.write_text('kind = "llm-lora"\nobjective = "label-token"\nlearning_rate = 1e-4\nbatch_size = 4\n' + body)
    return path


def test_a_recipe_loads_from_a_path_with_defaults_filled_in(tmp_path):
    r = load_recipe(str(write(tmp_path, "")))
    assert r["grad_accum"] == 1 and r["backend"] == "auto" and r["name"] == "r"


def test_unknown_key_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*learnig_rate"):
        load_recipe(str(write(tmp_path, "learnig_rate = 0.1\n")))


def test_wrong_type_and_bad_choice_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="batch_size.*expects int"):
        load_recipe(str(_replace(tmp_path, "batch_size = 4", 'batch_size = "4"')))
    with pytest.raises(ConfigError, match="precision.*fp16"):
        load_recipe(str(write(tmp_path, 'precision = "int3"\n')))
    with pytest.raises(ConfigError, match="gradient_checkpointing.*expects bool"):
        load_recipe(str(write(tmp_path, "gradient_checkpointing = 1\n")))


def _replace(tmp_path, old, new):
    path = write(tmp_path, "")
    path.write_text(path.read_text().replace(old, new))
    return path


def test_missing_required_key_and_unknown_recipe_name_are_refused(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('kind = "llm-lora"\nlearning_rate = 1e-4\nbatch_size = 4\n')
    with pytest.raises(ConfigError, match="missing required key 'objective'"):
        load_recipe(str(path))
    with pytest.raises(ConfigError, match="unknown recipe 'nope'.*full"):
        load_recipe("nope")
    path.write_text('kind = "rnn"\n')
    with pytest.raises(ConfigError, match="kind 'rnn'"):
        load_recipe(str(path))


@pytest.mark.parametrize("body, message", [
    ("learning_rate = 0\n", "'learning_rate' must be > 0, found 0"),
    ("batch_size = 0\n", "'batch_size' must be >= 1, found 0"),
    ("lora_dropout = 1.0\n", r"'lora_dropout' must be in \[0, 1\), found 1.0"),
    ("epochs = 0\n", "'epochs' must be > 0"),
    ("max_steps = -1\n", "'max_steps' must be >= 0"),
    ("learning_rate = nan\n", "'learning_rate' must be > 0, found nan"),
    ('target_modules = ["q_proj", 3]\n', "'target_modules' expects a list of str"),
])
def test_out_of_range_numbers_and_bad_lists_are_refused_by_key(tmp_path, body, message):
    source = write(tmp_path, "")
    text = source.read_text()
    key = body.split(" =")[0]
    lines = [line for line in text.splitlines() if not line.startswith(key + " =")]
    source.write_text("\n".join(lines) + "\n" + body)
    with pytest.raises(ConfigError, match=message):
        load_recipe(str(source))


def test_every_numeric_key_of_every_kind_has_a_range_and_a_schema_without_one_is_refused():
    for schema in (LLM_LORA, ENCODER):
        for name, key in schema.keys.items():
            assert not set(key.types) & set(NUMBER) or key.range is not None, (schema.kind, name)
    with pytest.raises(TypeError, match="'steps'.*no range"):
        RecipeSchema("toy", {"kind": Key((str,)), "steps": Key((int,), 1)})


def test_ranges_by_hand():
    assert 0 in Range(0) and -1e-9 not in Range(0)
    assert 0 not in Range(0, low_open=True) and 1e-12 in Range(0, low_open=True)
    assert 1 in Range(0, 1) and 1 not in Range(0, 1, high_open=True)
    assert float("inf") not in Range(0)
    assert (str(Range(1)), str(Range(0, low_open=True)), str(Range(0, 1, high_open=True))) == \
        (">= 1", "> 0", "in [0, 1)")


def test_encoder_recipes_are_checked_against_the_same_kind_of_schema():
    raw = {"kind": "encoder", "method": "adapter"}
    with pytest.raises(ConfigError, match="'method' is 'adapter'; expected one of lora, full"):
        validate(raw, "here")
    with pytest.raises(ConfigError, match="'warmup_ratio' must be in \\[0, 1\\]"):
        validate({"kind": "encoder", "warmup_ratio": 1.5}, "here")
    with pytest.raises(ConfigError, match="unknown key.*lora_rank.*'encoder' recipe"):
        validate({"kind": "encoder", "lora_rank": 8}, "here")
    recipe = validate({"kind": "encoder"}, "here")
    assert list(recipe) == list(ENCODER.keys) and recipe["method"] == "lora" and recipe["max_length"] == 128


def test_a_trainer_takes_recipes_of_its_own_kind_only_and_keeps_the_name():
    recipe = load_recipe("minilm")
    assert for_trainer(recipe, "encoder") == recipe
    with pytest.raises(ConfigError, match="recipe 'minilm' has kind 'encoder'; expected 'llm-lora'"):
        for_trainer(recipe, "llm-lora")
    with pytest.raises(ConfigError, match="recipe 'minilm'.*'batch_size' must be >= 1"):
        for_trainer({**recipe, "batch_size": 0}, "encoder")


def test_overrides_are_validated_and_keep_the_name():
    changed = override(load_recipe("full"), {"batch_size": 256, "learning_rate": 6e-4}, "full with --set")
    assert (changed["batch_size"], changed["learning_rate"], changed["name"]) == (256, 6e-4, "full")
    with pytest.raises(ConfigError, match="full with --set: unknown key.*batch"):
        override(load_recipe("full"), {"batch": 256}, "full with --set")


# The import graph: every import statement (at module level or inside a function) and every string naming a
# module (importlib.import_module, loader tables) in screener/ and training/ is an edge.

def module_graph() -> dict[str, set[str]]:
    files = {}
    for package in ("screener", "training"):
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in files.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                targets.add(node.value)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def test_no_training_module_is_in_an_import_circle():
    graph = module_graph()
    training = sorted(m for m in graph if m.split(".")[0] == "training")
    assert {"training.recipes", "training.encoder", "training.llm", "training.train"} <= set(training)
    circles = [m for m in training if any(m in reachable(graph, t) for t in graph[m])]
    assert circles == []


def test_the_import_graph_sees_lazy_and_string_imports():
    graph = module_graph()
    assert "training.train" in graph["screener.cli"]  # imported inside a command function
    assert "screener.classifiers.hf" in reachable(graph, "screener.classifiers.registry")  # a loader table


def test_the_scan_path_never_reaches_training():
    graph = module_graph()
    assert not {m for m in reachable(graph, "screener.scan") if m.split(".")[0] == "training"}


@pytest.mark.parametrize("module", ["training", "training.compare", "training.data", "training.distill",
                                    "training.encoder", "training.evaluate", "training.llm", "training.recipes",
                                    "training.teacher", "training.train"])
def test_each_training_module_imports_alone_in_a_fresh_interpreter_without_torch(module):
    code = (f"import sys, {module}\n"
            "heavy = [m for m in ('torch', 'transformers', 'peft', 'unsloth') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_three_way_teacher_recipe_trains_on_messages_and_a_share_of_sst2_one_epoch():
    r = load_recipe("qwen-3way")
    assert r["label_words"] == ["negative", "neutral", "positive"] and r["objective"] == "label-token"
    assert (r["messages"], r["messages_repeat"], r["sst2_fraction"], r["exclude"]) == \
        ("training/labels/messages_train.tsv", 5, 0.75, "training/labels/messages_dev.tsv")
    assert (r["epochs"], r["batch_size"], r["max_steps"]) == (1.0, 64, 0)
    assert "neutral" in r["instruction"] and "negative" in r["instruction"] and "positive" in r["instruction"]
    assert load_recipe("full")["label_words"] == ["negative", "positive"] and load_recipe("full")["messages"] == ""


def test_the_three_way_student_recipes_select_on_dev_macro_f1_and_never_train_on_dev():
    for name in ("minilm-3way-distill", "mpnet-3way"):
        r = load_recipe(name)
        assert (r["num_labels"], r["dev"], r["select_metric"], r["select_best"]) == \
            (3, "training/labels/messages_dev.tsv", "macro_f1", True)
        assert r["exclude"] == r["dev"] and r["teacher_unlabelled"] is True
        assert r["messages"] == "training/labels/messages_train.tsv"
    with pytest.raises(ConfigError, match="'num_labels' must be in \\[2, 3\\], found 4"):
        validate({"kind": "encoder", "num_labels": 4}, "here")
    with pytest.raises(ConfigError, match="'select_metric' is 'f1'"):
        validate({"kind": "encoder", "select_metric": "f1"}, "here")


def test_overrides_from_the_command_line_parse_json_or_keep_text():
    from training.recipes import parse_overrides

    assert parse_overrides(["epochs=2", "teacher=out/t.parquet", 'teacher=""', "select_best=false"]) == \
        {"epochs": 2, "teacher": "", "select_best": False}
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["epochs"])
