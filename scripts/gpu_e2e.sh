#!/usr/bin/env bash
# The GPU path end to end (issue 17 item 2) as ONE command: about 8 minutes on one H200, or a
# CPU smoke scale of the same code path (tests/test_gpu_e2e.py runs it in the suite).
#
#   scripts/gpu_e2e.sh                 # SCALE=auto: gpu when torch sees CUDA, else smoke
#   SCALE=smoke RESULTS=/tmp/e2e scripts/gpu_e2e.sh
#
# Phases (each one or more `specbench train` calls, one trial after another in local processes):
#   1. the quickstart (configs/quickstart.yaml) with resources.use_gpu=true, one GPU per trial;
#   2. a GPT-2-small-shaped model in bf16, one trial per optimizer (configs/gpu/e2e_h200.yaml:
#      adamw, spectral_newton, muon, shampoo, soap): tokens/s and MFU against the datasheet peak;
#   3. two short AdamW trials of the same model ending with a curvature probe in mode full and in
#      mode kronecker (phase times in the profile table);
#   4. Spectral Newton's sharded vs redundant step (configs/profile/spectral_step_gpu.yaml) with
#      `python -m bench.profile.runner`: one GPU is one rank, so P = 1 only;
#   5. one Parquet file per table ($REPORT/data/) and $REPORT/gpu_e2e.md (python -m analysis.gpu_e2e).
# The smoke scale shrinks the model, the data and the steps with KEY=VALUE overrides and skips
# what only a GPU has (use_gpu, nccl, the datasheet peak: MFU is then against a measured CPU
# matmul); everything else runs the same code.
#
# Why `specbench train` and not `specbench sweep`: the lent GPU machine has no Ray and no network,
# and Ray's wheel alone (~70 MB) exceeds the 64 MiB the working tree and carried files may take.
# `specbench train` runs a trial exactly as a sweep's worker does (bench.trial.run_trial over a
# local process group: nccl on GPU, gloo on CPU), without Ray.
#
# Packages: the GPU image has torch, transformers, timm, pandas, pyarrow, pyyaml, scipy but not
# pydantic, DeepSpeed or pytorch-optimizer. Carry them as wheels in .whl/ (ignored by git; ~6 MiB
# in all, see the README's "GPU end to end"); this script installs them into /tmp/site when an
# import fails. The project is not pip-installed there (its lower bounds need not match the
# image's torch): it runs from the checkout with PYTHONPATH=$PWD.
#
# Environment: SCALE (auto|gpu|smoke), RESULTS (results root, default results/gpu-e2e), REPORT
# (default analysis/reports/gpu-h200 on a GPU, $RESULTS/report at smoke scale, so that a CPU run
# never overwrites the GPU report), BUDGET_S (wall-clock budget, default 480: a phase gets at most
# what is left), PYTHON (default python3), OUT (where a lent machine returns files: the report,
# its Parquet and the log are copied there when set). Exit status: 0 when every phase succeeded.
set -uo pipefail

PY="${PYTHON:-python3}"
RESULTS="${RESULTS:-results/gpu-e2e}"
BUDGET_S="${BUDGET_S:-480}"
export PYTHONUNBUFFERED=1 PYTHONWARNINGS=ignore TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
t0=$(date +%s)
failed=()

SCALE="${SCALE:-auto}"
case "$SCALE" in auto|gpu|smoke) ;; *) echo "SCALE must be auto, gpu or smoke, not '$SCALE'" >&2; exit 2 ;; esac

# --- packages (carried wheels only when something is missing; never Ray) ----------------------
need='import torch, yaml, pyarrow, pandas, transformers, pydantic, deepspeed, pytorch_optimizer'
if ! "$PY" -c "$need" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  echo "installing carried wheels: $(ls .whl | tr '\n' ' ')"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
"$PY" -c "$need" || { echo "FATAL: a package is missing (carry pydantic, deepspeed, pytorch-optimizer as .whl/)"; exit 3; }

# --- scale --------------------------------------------------------------------------------------
if [ "$SCALE" = auto ]; then
  SCALE=$("$PY" -c 'import torch; print("gpu" if torch.cuda.is_available() else "smoke")')
fi
case "$SCALE" in
  gpu)
    REPORT="${REPORT:-analysis/reports/gpu-h200}"
    QUICK=(resources.use_gpu=true resources.num_workers=1)
    QUICK_TRIALS=(0 1 2 3)
    LM=()
    PROBE=(training.steps=20)
    SPECTRAL=configs/profile/spectral_step_gpu.yaml
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true ;;
  smoke)
    REPORT="${REPORT:-$RESULTS/report}"
    QUICK=(resources.num_workers=1 seeds=1 training.steps=4 training.eval_every=4 training.log_every=2)
    QUICK_TRIALS=(0 1)
    LM=(resources.use_gpu=false workloads.0.model_args.n_layer=1 workloads.0.model_args.n_embd=32
        workloads.0.model_args.n_head=2 workloads.0.dataset_args.seq_len=32 workloads.0.dataset_args.max_bytes=100000
        training.steps=3 training.micro_batch_size=4 training.eval_every=3 training.log_every=1
        training.eval_batch_size=4 training.lr_schedule.warmup_steps=1)
    for entry in 5 6; do
      LM+=(optimizers.$entry.probes.settings.batch_size=8 optimizers.$entry.probes.settings.micro_batch_size=4
           optimizers.$entry.probes.settings.top_k=3)
    done
    LM+=(optimizers.5.probes.settings.h_samples=4)
    PROBE=(training.steps=2)
    SPECTRAL=configs/profile/spectral_step_smoke.yaml ;;
esac
mkdir -p "$REPORT"
exec > >(tee "$REPORT/gpu_e2e.log") 2>&1
echo "== gpu_e2e.sh scale $SCALE, results $RESULTS, report $REPORT, budget ${BUDGET_S} s ($(date -u +%FT%TZ))"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'

# One phase under `timeout`: at most CAP seconds and never past the budget; a failure is noted
# and the next phase still runs (what a phase measured is already on disk).
phase() {
  local name=$1 cap=$2; shift 2
  local left=$(( BUDGET_S - ($(date +%s) - t0) ))
  local limit=$(( cap < left ? cap : left ))
  if (( limit < 10 )); then echo "== $name: skipped, budget spent"; failed+=("$name(budget)"); return; fi
  echo "== $name (at most ${limit} s): $*"
  local s=$(date +%s)
  timeout "$limit" "$@"
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - s )) s"
  (( rc == 0 )) || failed+=("$name($rc)")
}

TRAIN=("$PY" -m launchers.cli train)
phase quickstart 120 "${TRAIN[@]}" configs/quickstart.yaml "${QUICK[@]}" --storage "$RESULTS" --trial "${QUICK_TRIALS[@]}"
phase optimizers 270 "${TRAIN[@]}" configs/gpu/e2e_h200.yaml "${LM[@]}" --storage "$RESULTS" --trial 0 1 2 3 4
phase probes 150 "${TRAIN[@]}" configs/gpu/e2e_h200.yaml "${LM[@]}" "${PROBE[@]}" --storage "$RESULTS" --trial 5 6
phase spectral_step 60 "$PY" -m bench.profile.runner --config "$SPECTRAL" --out "$RESULTS"

# --- Parquet and report (also after a failed phase: they hold whatever was measured) -----------
"$PY" -m launchers.cli consolidate "$RESULTS" --out "$REPORT/data" || failed+=("consolidate")
"$PY" -m analysis.gpu_e2e "$REPORT/data" --out "$REPORT" || failed+=("report")
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$REPORT/gpu_e2e.md" "$REPORT/gpu_e2e.log" "$REPORT"/data/*.parquet "$OUT"/ 2>/dev/null || true
fi
echo "== done in $(( $(date +%s) - t0 )) s; failed: ${failed[*]:-none}"
(( ${#failed[@]} == 0 ))
