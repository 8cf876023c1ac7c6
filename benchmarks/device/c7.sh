set -x
source .carry/cmd/env.sh
cat /tmp/parts/rA /tmp/parts/rB .carry/c7/rC > /tmp/R.tar && sha256sum /tmp/R.tar
mkdir -p /tmp/rw && tar xf /tmp/R.tar -C /tmp/rw
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site /tmp/rw/*.whl 2>&1 | tail -3
python3 benchmarks/gpu_scan.py --models smollm2 --data-dir /tmp/shared/data --smollm2-gguf $GGUF --padded-n 4096 --gpus 2 --profile --out $OUT/gpu_scan_smollm2.json 2>&1 | grep -v "^W1" | tee $OUT/smollm2.log | tail -12
# The package is not installed there: the source tree goes on the path, and sql/ where an install puts it.
export PYTHONPATH=/tmp/site:$PWD
ln -sfn ../sql screener/sql
ln -sfn /tmp/shared ../shared
rm -rf /tmp/smolmodel && cp -r screener/models/smollm2-sst2 /tmp/smolmodel
python3 -c "import json,sys; p='/tmp/smolmodel/screener_model.json'; m=json.load(open(p)); m['base']=sys.argv[1]; json.dump(m, open(p,'w'))" $GGUF
timeout 400 python3 benchmarks/ray_scan.py --model /tmp/smolmodel --device cuda --messages 50000 --users 2000 --cpus 16 --rows-per-task 12500 --out $OUT/ray_scan_gpu.json > $OUT/ray.log 2>&1; echo rc=$?; grep -v "^W1" $OUT/ray.log | tail -30
