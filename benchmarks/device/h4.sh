# Third session, call 4 (carry .carry/h4: the GGUF's last piece): joins the GGUF; gpu_scan.py for SmolLM2 on 1 and
# 2 GPUs with the profile.
set -x
source benchmarks/device/env.sh
cat /tmp/parts/gA /tmp/parts/gB .carry/h4/gC > $GGUF && sha256sum $GGUF
timeout 500 python3 benchmarks/gpu_scan.py --models smollm2 --data-dir /tmp/shared/data --smollm2-gguf $GGUF --padded-n 4096 --gpus 2 --profile --out $OUT/gpu_scan_smollm2.json 2>&1 | grep -v "^W1" | tee $OUT/smollm2.log | tail -12
