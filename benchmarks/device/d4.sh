set -x
source benchmarks/device/env.sh
export PYTHONPATH=/tmp/site:$PWD
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/f4/duckdb-*.whl 2>&1 | tail -2
ln -sfn ../sql screener/sql
ln -sfn /tmp/shared ../shared
rm -rf /tmp/smolmodel && cp -r screener/models/smollm2-sst2 /tmp/smolmodel
python3 -c "import json,sys; p='/tmp/smolmodel/screener_model.json'; m=json.load(open(p)); m['base']=sys.argv[1]; json.dump(m, open(p,'w'))" $GGUF
for dev in cuda:0 cuda; do
  timeout 250 python3 benchmarks/scan_e2e.py --parts gpu --model /tmp/smolmodel --device $dev --messages 300000 --out $OUT/scan_gpu_${dev/:/}.json 2>&1 | grep -v "^W1" | tail -16
done
