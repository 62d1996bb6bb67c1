#!/usr/bin/env bash
# The main job on the embedded defaults (SQLite + a local blob store), in a scratch home:
# register a base, push adapters, list/show/pull, validate, merge and verify, combine.
set -euo pipefail
cd "$(dirname "$0")/.."
export LORAHUB_HOME="$PWD/.demo/home" HF_HUB_OFFLINE=1
unset LORAHUB_DATABASE_URL LORAHUB_STORE_URL LORAHUB_URL
rm -rf .demo && mkdir -p .demo
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

python scripts/make_tiny.py .demo >/dev/null 2>&1
step lorahub base add .demo/tiny-llama --name tiny-llama
step lorahub push .demo/sql-adapter --name acme/sql-lora --base tiny-llama --metric accuracy=0.81 --tag sql \
  --description "SQL generation"
step lorahub push .demo/sql-adapter --name acme/sql-lora
step lorahub push .demo/chat-adapter --name acme/chat-lora --metric accuracy=0.74
step lorahub list --where "accuracy>=0.7" --sort -accuracy
step lorahub show acme/sql-lora:sql
step lorahub pull acme/sql-lora:1 -o .demo/pulled
step diff -r -x .lorahub-output.json .demo/sql-adapter .demo/pulled
echo "pulled folder is byte-identical to the pushed one"
step lorahub validate acme/sql-lora --base tiny-llama
step lorahub validate .demo/chat-adapter --base .demo/tiny-llama
step lorahub merge --base tiny-llama acme/sql-lora -o .demo/merged --name acme/llama-sql
step python scripts/check_merge.py .demo/tiny-llama .demo/sql-adapter .demo/merged
step lorahub merge --base tiny-llama acme/sql-lora@0.7 acme/chat-lora@0.3 --method ties --density 0.5 -o .demo/ties
step lorahub combine acme/sql-lora acme/chat-lora --method cat --name acme/sql-chat
step lorahub show acme/llama-sql
