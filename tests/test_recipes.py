"""Recipe files: every shipped one loads, each says how to run it, and mistakes are refused by name."""

from __future__ import annotations

import pytest

from screener.errors import ConfigError
from training.recipes import RECIPES_DIR, load_recipe, recipe_names


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
