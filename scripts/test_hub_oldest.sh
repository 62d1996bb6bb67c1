#!/usr/bin/env bash
# The Hub sync tests against the oldest huggingface_hub that pyproject.toml admits (1.31.0), laid over
# the project's venv on PYTHONPATH. transformers 5 needs huggingface_hub >= 2.4, so the tests that
# build models with it (base add, pipelines, PEFT loading the export) run only with the newest one,
# in `make test`; every import, export and sync flow runs here too. tests/hubsim checks the emulator
# against the newest client (whose retries and offline switch differ), so it is not run here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
OVERLAY="${HF_OLDEST_DIR:-.cache/hf-oldest}"
OLDEST="$(sed -n 's/.*"huggingface_hub>=\([0-9.]*\),.*/\1/p' pyproject.toml | head -1)"
if [ ! -d "$OVERLAY/huggingface_hub" ]; then
  rm -rf "$OVERLAY.tmp"
  "$VENV/bin/pip" install -q --no-deps --target "$OVERLAY.tmp" "huggingface_hub==$OLDEST"
  mv "$OVERLAY.tmp" "$OVERLAY"
fi
got="$(PYTHONPATH="$OVERLAY" "$VENV/bin/python" -c 'import huggingface_hub; print(huggingface_hub.__version__)')"
[[ "$got" == "$OLDEST" || "$got" == "$OLDEST.0" ]] || { echo "expected huggingface_hub $OLDEST on the overlay, got $got" >&2; exit 1; }
echo "Hub sync tests with huggingface_hub $got"
PYTHONPATH="$OVERLAY" "$VENV/bin/pytest" -q -n 2 -p no:cacheprovider tests/hubsync \
  --ignore tests/hubsync/test_bases.py --ignore tests/hubsync/test_pipeline_push.py \
  --deselect tests/hubsync/test_export.py::test_peft_loads_the_exported_repo "$@"
