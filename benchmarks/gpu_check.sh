#!/usr/bin/env bash
# quantkit's GPU check, in one call on a bare machine with an NVIDIA GPU, Python and CUDA torch
# (it stays well under 10 minutes on one H100):
#
#   1. installs what such a machine usually lacks from wheels placed beside the project in
#      $WHEELS (default .whl/): bitsandbytes, compressed-tensors, quantkit itself and any of
#      quantkit's runtime dependencies the machine lacks (prepare them with
#      `bash benchmarks/gpu_check.sh --prepare`, which downloads them here for Python 3.12 /
#      x86_64 and builds quantkit's wheel);
#   2. prints the GPU, torch, CUDA and bitsandbytes versions, and fails if CUDA is not usable;
#   3. runs the tests marked `gpu`;
#   4. converts the seeded GPT-2-large-shaped folder with `--device cuda` for int8 and nf4 (and
#      fp8 on the Llama-shaped folder of that size: GPT-2's Conv1D weights are kept by the
#      compressed-tensors schemes, whose kernels run on the CPU whatever --device says), compares the stored tensors with the CPU
#      output, and times it against transformers + bitsandbytes on the same GPU
#      (benchmarks/bench_gpu.py), writing JSON to $OUT (default /tmp/gpu-check);
#   5. loads the fp8 output with transformers on the GPU, compressed (FP8 kernels where the GPU has
#      them), and compares its logits with the CPU dequantized path (benchmarks/gpu_ct_load.py).
#
# GPU_CHECK_DEVICE=cpu runs steps 3 and 4 on the CPU (the GPU tests then skip and the
# comparison is CPU against CPU): the way to test the script's steps on a machine without a GPU.
# GPU_CHECK_SIZE (default large) and GPU_CHECK_SCHEMES choose the checkpoint and schemes.
# GPU_CHECK_RAY=1 adds step 6: --executor ray --ray-gpus-per-task 1 --device cuda on GPT-2 small
# against a local --device cuda run, int8 and nf4, byte for byte (benchmarks/gpu_ray_check.py);
# with --prepare it also downloads Ray and its missing dependencies and trims the Ray and
# bitsandbytes wheels so that all of them fit a 64 MiB transfer.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-large}

if [ "${1:-}" = "--prepare" ]; then
  mkdir -p "$WHEELS"
  platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
             --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d "$WHEELS" bitsandbytes==0.50.2 compressed-tensors==0.19.0 \
    pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0 loguru==0.7.3
  $PY -m pip wheel -q --no-deps -w "$WHEELS" .
  if [ "${GPU_CHECK_RAY:-0}" = "1" ]; then
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
      -d "$WHEELS" ray==2.60.0 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1
    $PY benchmarks/gpu_ray_check.py --trim-wheels "$WHEELS"
  fi
  ls -la "$WHEELS"
  exit 0
fi

mkdir -p "$OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/quantkit-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/quantkit-site${PYTHONPATH:+:$PYTHONPATH}
fi
# the project's own sources win over an installed wheel of an older commit
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

echo "== environment"
$PY - "$DEVICE" <<'EOF'
import sys
import torch
device = sys.argv[1]
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if device.startswith("cuda"):
    if not torch.cuda.is_available():
        sys.exit("CUDA is not usable here: run with GPU_CHECK_DEVICE=cpu to test the steps on the CPU")
    print("gpu", torch.cuda.get_device_name(0))
import bitsandbytes, quantkit
print("bitsandbytes", bitsandbytes.__version__, "quantkit", quantkit.__version__, "from", quantkit.__file__)
EOF

echo "== tests marked gpu"
set +e
$PY -m pytest -q -m gpu tests -p no:cacheprovider 2>&1 | tee "$OUT/gpu-tests.log"
status=${PIPESTATUS[0]}
set -e
# exit 5: no test ran (none collected, e.g. every gpu test deselected): not a failure of the check
if [ "$status" -ne 0 ] && [ "$status" -ne 5 ]; then
  echo "gpu tests failed (exit $status)" >&2
  exit "$status"
fi

echo "== conversion on $DEVICE against the CPU output and transformers + bitsandbytes"
schemes=${GPU_CHECK_SCHEMES:-$($PY -c "
from quantkit.schemes import SCHEMES as REGISTRY
print(','.join(n for n in ('int8', 'nf4', 'fp8') if n in REGISTRY))" 2>/dev/null || echo int8,nf4)}
$PY benchmarks/bench_gpu.py --size "$SIZE" --schemes "$schemes" --device "$DEVICE" --repeat "${GPU_CHECK_REPEAT:-2}" --json "$OUT/bench_gpu.json"

echo "== fp8 output loaded by transformers on $DEVICE against the CPU dequantized path"
$PY benchmarks/gpu_ct_load.py --device "$DEVICE" --json "$OUT/gpu_ct_load.json"

if [ "${GPU_CHECK_RAY:-0}" = "1" ]; then
  echo "== --executor ray with a GPU per task against a local --device $DEVICE run"
  $PY benchmarks/gpu_ray_check.py --device "$DEVICE" --json "$OUT/gpu_ray_check.json"
fi
echo "results: $OUT"
