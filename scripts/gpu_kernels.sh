#!/usr/bin/env bash
# The kernel profile on ONE lent GPU (an H200), as one prepared device check of at most ~4 minutes.
#
# Runs in the repository root. Writes into $OUT (default ./gpu_out):
#   profile.parquet    the `profile` table (op=kernel rows of the optimizers' routes + the op=shape
#                      model catalogue)
#   h200.json          the fitted device cost constants (analysis.cost_model)
#   gpu_kernels.log    everything printed
# Copy the JSON to analysis/device_costs/h200.json and the Parquet to
# analysis/device_costs/h200-profile.parquet; `python -m launchers.cost fit` re-analyses it.
#
# What it needs there: torch with CUDA (the image's), pyyaml, pyarrow, pandas (the image has
# them) and pydantic, which the H200 image lacks and cannot download: carry its wheels as .whl/.
# Once, here (Python 3.12 wheels for the image):
#   echo /.whl/ >> .git/info/exclude
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 \
#     typing_extensions==4.16.0
# then run it with carry [".whl"]. It never installs Ray or DeepSpeed (the runner's `__main__`
# needs neither).
#
# Time: ~30 s start-up (torch, CUDA context, shape derivation) + at most ~190 s of measuring
# (configs/profile/kernels_gpu.yaml: time_budget_s 170 plus the kernel in flight; a hard
# `timeout` of 215 s backs it up, and the runner rewrites its Parquet every 20 s) + ~15 s fit.
set -uo pipefail

OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_kernels.log") 2>&1
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
echo "== gpu_kernels.sh $(date -u +%FT%TZ) in $PWD"

# 1. torch (never a second one if it is there).
if ! "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; then
  echo "torch is missing: trying pip install torch"
  "$PY" -m pip install -q --retries 0 --timeout 20 torch || { echo "FATAL: no torch"; exit 3; }
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())' || exit 3
fi

# 2. The light dependencies of the runner and of the fit (never ray, never deepspeed).
if ! "$PY" -c 'import pydantic, yaml, pyarrow, pandas' 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    echo "installing carried wheels: $(ls .whl | tr '\n' ' ')"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
      && export PYTHONPATH="$PYTHONPATH:/tmp/site"
  else
    "$PY" -m pip install -q --retries 0 --timeout 10 pydantic pyyaml pyarrow pandas || true
  fi
fi
"$PY" -c 'import pydantic, yaml, pyarrow, pandas; print("pydantic", pydantic.VERSION, "pyarrow", pyarrow.__version__)' \
  || { echo "FATAL: pydantic/pyyaml/pyarrow/pandas missing (carry them as .whl/)"; exit 3; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader 2>/dev/null || true

# 3. Measure (no Ray). The config's own budget stops it in time; timeout is the backstop.
timeout 215 "$PY" -m bench.profile.runner --config configs/profile/kernels_gpu.yaml \
  --out "$OUT/profile.parquet" --job-id h200
rc=$?
echo "== runner exit $rc after $(( $(date +%s) - t0 )) s"
[ -f "$OUT/profile.parquet" ] || { echo "FATAL: no profile.parquet"; exit 4; }

# 4. Fit the device cost constants from what was measured (also after a timeout: the file is a flush).
timeout 60 "$PY" -m analysis.cost_model fit "$OUT/profile.parquet" --name h200 --out "$OUT/h200.json"
fit=$?
echo "== done in $(( $(date +%s) - t0 )) s (runner $rc, fit $fit)"
exit $(( rc != 0 ? rc : fit ))
