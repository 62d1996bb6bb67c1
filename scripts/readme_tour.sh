#!/usr/bin/env bash
# Run the README's CLI tour in a scratch folder and print every command with its real output, so
# that the README's console blocks can be refreshed from it (they are copied from this output).
#   bash scripts/readme_tour.sh [DIR]     (default /tmp/tour; it is emptied first)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$ROOT/.venv/bin:$PATH"
DIR=${1:-/tmp/tour}
rm -rf "$DIR" && mkdir -p "$DIR"
export LORAHUB_HOME="$DIR/home" HF_HUB_OFFLINE=1 COLUMNS=200
unset LORAHUB_DATABASE_URL LORAHUB_STORE_URL LORAHUB_URL LORAHUB_DEBUG
python "$ROOT/scripts/make_tour_inputs.py" "$DIR" >/dev/null 2>&1 || { echo "could not build the inputs" >&2; exit 1; }
cd "$DIR"
t() { printf '$ %s\n' "$*"; "$@" 2>&1; echo; }
quiet() { "$@" >/dev/null 2>&1; }

echo "## push"
t lorahub push ./sql-adapter --name acme/sql-lora --metric accuracy=0.81 --tag sql --description "SQL generation"
t lorahub push ./sql-adapter --name acme/sql-lora
t lorahub push ./chat-adapter --name acme/chat-lora -m accuracy=0.74 -m rougeL=0.41
t lorahub push ./sql-adapter --name acme/sql-lora -m accuracy=0.82 -t prod
t lorahub push ./broken --name acme/x
echo "## list"
t lorahub list
t lorahub list --where "accuracy>=0.8" --sort -accuracy
t lorahub list --limit 1
echo "## show"
t lorahub show acme/sql-lora:sql
t lorahub show acme/sql-lora:7
t lorahub show acme/nope --json
echo "## tag, metrics"
t lorahub tag acme/chat-lora:1 prod
t lorahub tag acme/chat-lora prod --delete
t lorahub metrics set acme/sql-lora:1 rougeL=0.44 bleu=31.2
t lorahub metrics rm acme/sql-lora:1 bleu
echo "## pull"
t lorahub pull acme/sql-lora:1 -o ./out
t lorahub pull acme/sql-lora:1 -o ./out
t lorahub pull acme/sql-lora:1 -o ./home --force
t lorahub pull acme/sql-lora:1 -o ./thesis --force
echo "## rm, gc, verify, db"
t lorahub rm acme/chat-lora:1
t lorahub gc
t lorahub verify --all
t lorahub db upgrade
echo "## base"
t lorahub base add ./tiny-llama --name tiny-llama
t lorahub base add ./tiny-llama --name tiny-llama
t lorahub base list
t lorahub base show tiny-llama
echo "## push --base, validate"
t lorahub push ./sql-adapter --name acme/sql --base tiny-llama
quiet lorahub push ./chat-adapter --name acme/chat
t lorahub push ./gpt2-adapter --name acme/gpt2 --base tiny-llama
t lorahub validate acme/sql --base tiny-llama
t lorahub validate acme/chat --base tiny-llama
t lorahub validate ./gpt2-adapter --base tiny-llama
t lorahub validate ./four-layer-adapter --base ./tiny-llama --json
t lorahub list --base tiny-llama
echo "## merge"
t lorahub merge --base tiny-llama acme/sql -o ./merged --name acme/llama-sql
t lorahub merge --base tiny-llama acme/sql -o ./merged-again
t lorahub merge --base tiny-llama acme/sql@0.7 acme/chat@0.3 -o ./merged-2 --dtype bfloat16
t lorahub merge --base tiny-llama acme/sql@0.7 acme/chat@0.3 -o ./tiny-llama --overwrite
t lorahub show acme/llama-sql
echo "## combine"
t lorahub combine acme/sql acme/chat --method cat --name acme/sql-chat
t lorahub combine acme/sql@0.6 acme/chat@0.4 --method svd --rank 4 --name acme/sql-chat-r4
t lorahub combine acme/sql acme/chat --method ties --density 0.3 --rank 8 --name acme/sql-chat-ties
t lorahub merge --base tiny-llama acme/sql@0.5 acme/chat@0.5 --method dare_ties --density 0.5 --seed 7 -o ./dare
echo "## pipelines"
t lorahub merge --base tiny-llama acme/sql -o ./merged --name acme/llama-sql --export torchscript,torch-export
t lorahub merge --base tiny-llama acme/sql -o ./merged --name acme/llama-sql --export torchscript,torch-export
cat > pipeline.yaml <<'YAML'
base_model: tiny-llama
merge_method: linear
models:
  - model: acme/sql
    weight: 0.7
  - model: acme/chat
    weight: 0.3
output: ./sql-chat
name: acme/llama-sql-chat
exports:
  - format: onnx
  - {format: torch-export, max_seq: 64}
YAML
sed 's/max_seq: 64/max_seq: 4096/' pipeline.yaml > too-long.yaml
t lorahub run too-long.yaml
t lorahub run pipeline.yaml
t lorahub run pipeline.yaml
t lorahub lineage acme/sql:1
t lorahub lineage tiny-llama
t lorahub base show acme/llama-sql-chat
