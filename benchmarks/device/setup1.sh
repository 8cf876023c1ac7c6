# The first call of a session, sourced by c1.sh and d1.sh: data, Llama-3.1-8B config and tokenizer, gguf and the
# first piece of the SmolLM2 GGUF, all from .carry/c1.
source .carry/cmd/env.sh
mkdir -p /tmp/smol /tmp/site /tmp/parts /tmp/shared
tar xzf .carry/c1/shared.tgz -C /tmp/shared
cp .carry/c1/gA /tmp/parts/
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .carry/c1/gguf-*.whl
