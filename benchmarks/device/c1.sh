set -x
source .carry/cmd/setup1.sh
nvidia-smi --query-gpu=name,memory.used --format=csv
python3 benchmarks/gpu_scan.py --models llama8b --data-dir /tmp/shared/data --llama-config /tmp/shared/models/llama-3.1-8b-config --llama-tokenizer /tmp/shared/models/llama-3.1-tokenizer --gpus 2 --profile --out $OUT/gpu_scan_llama.json 2>&1 | grep -v "^W1" | tee $OUT/llama.log | tail -30
