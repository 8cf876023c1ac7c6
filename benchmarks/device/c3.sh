set -x
source .carry/cmd/env.sh
cat /tmp/parts/gA /tmp/parts/gB .carry/c3/gC > $GGUF
sha256sum $GGUF
cp .carry/c3/uA /tmp/parts/
python3 benchmarks/gpu_scan.py --models smollm2 --data-dir /tmp/shared/data --smollm2-gguf $GGUF --padded-n 4096 --gpus 2 --profile --out $OUT/gpu_scan_smollm2.json 2>&1 | grep -v "^W1" | tee $OUT/smollm2.log | tail -30
