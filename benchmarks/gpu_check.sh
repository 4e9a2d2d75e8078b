#!/usr/bin/env bash
# GPU check: training throughput, MFU and memory (bf16) of GPT-2 small and medium (scanned and
# unrolled, with and without remat) and ResNet-50 on one GPU, in one run.
#
#   bash benchmarks/gpu_check.sh                      # six rows; estimated 5-6 min on an H100
#   bash benchmarks/gpu_check.sh --models gpt,resnet  # the first check's two rows, 3-5 min
#   bash benchmarks/gpu_check.sh --gpt-batch 32 --models gpt,gpt:scan:full
#   bash benchmarks/gpu_check.sh --xla-flags "--xla_gpu_enable_latency_hiding_scheduler=true"
#
# Runs benchmarks/gpu_models.py (see its docstring for what is measured and how) under a 470 s
# limit, so that the whole check, compilation included, ends inside 8 minutes. The last thing it
# prints is a markdown table; with $OUT set it also writes $OUT/gpu_check.json (and the log to
# $OUT/gpu_check.log).
#
# Python: $PYTHON, else python3. It needs jax with a CUDA backend, flax and optax; jaxdl is taken
# from this checkout (put first on PYTHONPATH), so no install is needed, and a `pip install -e .`
# works as well. jaxdl.nn, jaxdl.train and jaxdl.perf need nothing more (not Grain, ml_collections
# or Orbax), so a GPU image with JAX, Flax and Optax runs it as it is. No XLA flags are set unless
# --xla-flags is given (appended to $XLA_FLAGS). Every other option goes to gpu_models.py;
# --allow-cpu runs without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
LIMIT_S=${GPU_CHECK_LIMIT_S:-470}

args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --xla-flags) [ $# -ge 2 ] || { echo "--xla-flags needs a value" >&2; exit 2; }
                 export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }$2"; shift 2 ;;
    --xla-flags=*) export XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }${1#--xla-flags=}"; shift ;;
    *) args+=("$1"); shift ;;
  esac
done

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

echo "python: $(command -v "$PY") ($("$PY" --version 2>&1))"
if ! "$PY" -c "import jax, flax, optax"; then
  echo "ERROR: $PY cannot import jax, flax and optax. Install them, e.g." >&2
  echo "  $PY -m pip install -e . 'jax[cuda12]'   (or set PYTHON to a Python that has them)" >&2
  exit 2
fi
"$PY" -c "import jax, flax, optax, jaxdl; print('jax', jax.__version__, '| flax', flax.__version__, '| optax', optax.__version__, '| jaxdl from', jaxdl.__file__)"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
fi

json_args=()
log=/dev/null
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  json_args=(--json "$OUT/gpu_check.json")
  log="$OUT/gpu_check.log"
fi

timeout --signal=INT --kill-after=15 "$LIMIT_S" \
  "$PY" benchmarks/gpu_models.py ${json_args[@]+"${json_args[@]}"} ${args[@]+"${args[@]}"} 2>&1 \
  | tee "$log"
rc=${PIPESTATUS[0]}
if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
  # SIGINT first: gpu_models.py then prints the table of what it finished.
  echo "ERROR: gpu_models.py ran past ${LIMIT_S} s (GPU_CHECK_LIMIT_S) and was stopped; run" \
       "fewer rows (e.g. --models gpt,resnet) or smaller batches." >&2
fi
exit "$rc"
