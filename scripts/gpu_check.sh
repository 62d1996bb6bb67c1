#!/usr/bin/env bash
# The GPU checks (`pytest -m gpu`): the tensorrt export with its parity gate, and a merge on CUDA
# against the CPU merge of the same recipe. Run on a machine with an NVIDIA GPU and its driver.
#
# torch-tensorrt links a CUDA build of torch and pins its minor version (torch-tensorrt 2.13.x <->
# torch 2.13.x, TensorRT 11.0, CUDA 13), so this builds a separate virtual environment for it
# (.venv-gpu by default) and never touches the CPU one in .venv.
#
#   scripts/gpu_check.sh                    # create/refresh .venv-gpu, then run the GPU tests
#   VENV=/tmp/gpu TORCH_INDEX=https://download.pytorch.org/whl/cu130 scripts/gpu_check.sh -x
#
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv-gpu}"
PYTHON="${PYTHON:-python3}"
TORCH_VERSION="${TORCH_VERSION:-2.13.*}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cu130}"
TRT_SPEC="${TRT_SPEC:-torch-tensorrt>=2.13,<2.14}"

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu_check: no NVIDIA GPU visible (nvidia-smi); the GPU tests need one" >&2
  exit 2
fi
nvidia-smi -L

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
# The CUDA torch first, from PyTorch's index; then a constraint keeps every later install on it.
$PIP install -q "torch==${TORCH_VERSION}" --index-url "$TORCH_INDEX"
TORCH_PIN="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
CONSTRAINT="$(mktemp)"
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==${TORCH_PIN}" > "$CONSTRAINT"
$PIP install -q -c "$CONSTRAINT" "$TRT_SPEC"
$PIP install -q -c "$CONSTRAINT" -e '.[dev,export]'

"$VENV/bin/python" - <<'PY'
import torch, torch_tensorrt
assert torch.cuda.is_available(), "torch sees no CUDA device"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), torch-tensorrt {torch_tensorrt.__version__}, "
      f"{torch.cuda.get_device_name(0)} sm_{''.join(map(str, torch.cuda.get_device_capability(0)))}")
PY

exec "$VENV/bin/pytest" -m gpu tests -n 0 -rA -s "$@"
