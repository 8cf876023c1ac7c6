"""The GPU engine under different settings, each in a fresh process: cold first pass, warm pass, scan-sized calls.

A fresh process per variant matters: kernel plans (cuDNN attention, cuBLAS heuristics) and the CUDA caching
allocator are process-wide, so a variant run after another would start warm. Each variant reports

- ``first_pass_msgs_per_s``: the first call over all messages, every batch shape new (what a nightly scan meets);
- ``warm_msgs_per_s``: the same call again;
- ``window_msgs_per_s``: the messages again in calls of ``--window`` texts, as ``screener scan`` hands them over;
- ``producer_msgs_per_s``: the CPU side alone (tokenize, plan, pack, pin).

Settings are ``LabelTokenEngine`` keyword arguments (``attention=cudnn_attention``, ``max_padding=0.3``,
``token_budget=32768``), plus ``gpus=N`` for ``MultiGPUEngine`` over N GPUs and ``impl=FILE`` for a module
defining ``LabelTokenEngine`` read from another file (an earlier commit's ``screener/classifiers/gpu/runner.py``,
as a baseline; add ``producer=thread`` when that file defines the producer process itself, whose spawned child
cannot import a module loaded from a file); ``env.NAME=VALUE`` sets an
environment variable of the variant's process (``env.RAYON_NUM_THREADS=8``: the tokenizer's thread pool). Usage,
on the device:

    python benchmarks/engine_variants.py --model-dir SMOLLM2_CONFIG_DIR --data-dir DATA \\
        --variant "" --variant attention=cudnn_attention --variant gpus=2 --out engine_variants.json

``--model-dir`` is a folder with config.json and a tokenizer: the model gets random weights (speed does not
depend on them). ``--gguf FILE`` loads real weights instead. ``--smoke`` runs tiny shapes on CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_settings(spec: str) -> dict:
    settings: dict = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=", 1)
        for kind in (int, float):
            try:
                settings[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            settings[key] = value
    return settings


def build_engine(args: dict, settings: dict, device: str):
    import torch

    from gpu_scan import build_llama8b, load_smollm2
    from screener.classifiers.gpu.runner import LabelTokenEngine
    from screener.prompt import label_token_ids

    settings = dict(settings)
    if "impl" in settings:
        # Another version of the engine module (an earlier commit's file, say) as the same run's baseline.
        import importlib.util

        spec = importlib.util.spec_from_file_location("engine_impl", settings.pop("impl"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
        LabelTokenEngine = module.LabelTokenEngine

    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    if args["gguf"]:
        model, tokenizer = load_smollm2(SimpleNamespace(smollm2_gguf=args["gguf"]), device, dtype)
    else:
        folder = args["model_dir"]
        model, tokenizer = build_llama8b(
            SimpleNamespace(llama_config=folder, llama_tokenizer=folder, smoke=args["smoke"]), device, dtype)
    return LabelTokenEngine(model, tokenizer, label_token_ids(tokenizer), name="bench", model_id="bench",
                            **settings)


def one_variant(args: dict) -> dict:
    """Runs in its own process: builds the engine(s) and times the passes."""
    import torch

    from gpu_scan import load_messages
    from screener.classifiers.gpu.multi import MultiGPUEngine

    settings = dict(args["settings"])
    gpus = int(settings.pop("gpus", 1))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    texts = load_messages(Path(args["data_dir"]), args["n"])
    if gpus > 1:
        devices = [f"cuda:{i}" for i in range(gpus)] if device == "cuda" else ["cpu"] * gpus
        engine = MultiGPUEngine(functools.partial(build_engine, args, settings), devices)
    else:
        engine = build_engine(args, settings, device)

    def timed(fn) -> float:
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    window = args["window"]
    first = timed(lambda: engine.predict_negative(texts))
    warm = timed(lambda: engine.predict_negative(texts))
    windows = timed(lambda: [engine.predict_negative(texts[i:i + window]) for i in range(0, len(texts), window)])
    out = {"settings": args["settings"], "n": len(texts), "gpus": gpus, "window": window,
           "first_pass_msgs_per_s": round(len(texts) / first, 1), "warm_msgs_per_s": round(len(texts) / warm, 1),
           "window_msgs_per_s": round(len(texts) / windows, 1)}
    if gpus == 1:
        out["producer_msgs_per_s"] = round(len(texts) / timed(lambda: sum(1 for _ in engine.batches(texts))), 1)
        out["token_budget"] = engine.token_budget
        if device == "cuda":
            out["peak_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            out["gpu"] = torch.cuda.get_device_name()
    else:
        engine.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default="", help="config.json and tokenizer; random weights")
    parser.add_argument("--gguf", default="", help="a GGUF file with real weights")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--window", type=int, default=4096, help="texts per call in the scan-sized pass")
    parser.add_argument("--variant", action="append", default=None,
                        help='comma-separated settings, e.g. "attention=cudnn_attention,token_budget=32768"; '
                             '"" is the default')
    parser.add_argument("--smoke", action="store_true", help="tiny shapes, CPU allowed")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--timeout", type=float, default=None, help="seconds a variant may take")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_variant(json.loads(args.one))), flush=True)
        return
    if not (args.model_dir or args.gguf):
        parser.error("give --model-dir or --gguf")
    results = []
    for spec in args.variant or [""]:
        job = {"model_dir": args.model_dir, "gguf": args.gguf, "data_dir": args.data_dir, "n": args.n,
               "window": args.window, "smoke": args.smoke, "settings": parse_settings(spec)}
        env = dict(os.environ)
        env.update({k[len("env."):]: str(v) for k, v in job["settings"].items() if k.startswith("env.")})
        job["settings"] = {k: v for k, v in job["settings"].items() if not k.startswith("env.")}
        job["env"] = {k: v for k, v in env.items() if k not in os.environ or os.environ[k] != v}
        try:
            proc = subprocess.run([sys.executable, __file__, "--one", json.dumps(job)], capture_output=True,
                                  text=True, env=env, timeout=args.timeout)
        except subprocess.TimeoutExpired as exc:
            proc = SimpleNamespace(returncode=-1, stdout="", stderr=f"timed out after {exc.timeout} s")
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            result = {"settings": job["settings"], "error": proc.stderr.strip().splitlines()[-3:]}
        else:
            result = json.loads(lines[-1][len("RESULT "):])
        result["env"] = job["env"]
        print(json.dumps(result), flush=True)
        results.append(result)
        if args.out:
            args.out.write_text(json.dumps({"command": "python " + " ".join(
                [Path(sys.argv[0]).as_posix()] + sys.argv[1:]), "model": args.gguf or args.model_dir,
                "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
