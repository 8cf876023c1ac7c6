"""The scan-time LoRA merge (no peft import) equals peft's own merge_and_unload."""

import json
import sys

import numpy as np
import pytest
import torch

from screener.classifiers import hf
from screener.errors import ModelError


@pytest.fixture
def adapter_folder(tmp_path, tiny_model):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(5)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value", "intermediate.dense"],
                      modules_to_save=["classifier"])
    peft_model = get_peft_model(model, lora)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.normal_(0, 0.5)
    folder = tmp_path / "m"
    folder.mkdir()
    peft_model.save_pretrained(folder / "adapter")
    reference = peft_model.merge_and_unload()
    (folder / "screener_model.json").write_text(json.dumps(
        {"kind": "hf-seqcls", "base": str(tiny_model), "adapter": "adapter", "max_length": 32, "cpu_bf16": False}))
    return folder, reference


def test_merge_without_peft_equals_peft_merge_and_unload(adapter_folder):
    folder, reference = adapter_folder
    clf = hf.load(folder, json.loads((folder / "screener_model.json").read_text()), device="cpu")
    merged = dict(clf.model.named_parameters())
    for name, param in reference.named_parameters():
        torch.testing.assert_close(merged[name], param, atol=1e-6, rtol=1e-5, msg=name)


def test_loading_an_adapter_does_not_import_peft(adapter_folder):
    folder, _ = adapter_folder
    code = ("import sys, json, pathlib; from screener.classifiers import hf; f = pathlib.Path(sys.argv[1]); "
            "hf.load(f, json.loads((f / 'screener_model.json').read_text()), device='cpu'); "
            "print('peft' in sys.modules)")
    import subprocess

    out = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True)
    assert out.stdout.strip() == "False", out.stderr


def test_adapter_for_another_model_is_a_model_error(adapter_folder, tmp_path):
    folder, _ = adapter_folder
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter" / "adapter_model.safetensors"
    state = load_file(str(weights))
    state = {k.replace("encoder.layer.0", "encoder.layer.7"): v for k, v in state.items()}
    save_file(state, str(weights))
    with pytest.raises(ModelError, match="does not match the base model"):
        hf.load(folder, json.loads((folder / "screener_model.json").read_text()), device="cpu")
