#!/usr/bin/env bash
# Issue 13's GPU measurements in ONE prepared run on a CUDA machine (the H200 device machine: 15 minutes of device
# time per task, all tries together). Runs from the repository root; every step is under `timeout`, a failed step
# is recorded and the next one runs, and the steps stop starting once BUDGET_S (default 540 s) is spent, in this
# order of priority:
#   install   the carried wheels (albumentations, jsonargparse, timm, ...) + a pydensecrf2 build in the background
#   train     benchmarks/train_step.py --device cuda, ResNet-38 321x321 batch 8, 3 warm-up + 10 steps, AuxSegNet
#             (pairwise): bf16 + channels-last plain and Lightning in both orders, Lightning with wsss fit's progress
#             bar and throughput callbacks (+ FLOPs), then each lever on its
#             own: cudnn.benchmark, SGD foreach, SGD fused, dilated convs as space-to-batch
#   crf       benchmarks/crf_torch.py --device cuda: torch CRF vs pydensecrf, agreement + speed at 500x375
#   refresh   benchmarks/pseudo_refresh.py --device cuda --crf torch (ResNet-38, 500x375, pipelined batches)
#   pytest    the gpu-marked tests (tests/test_crf_torch.py, tests/test_ddp_gpu.py: NCCL DDP fit -> refresh -> test)
#   more      the baseline timed over a window without per-step syncs (plain vs Lightning + callbacks, the NaN
#             guard synchronous and deferred), a
#             torch.profiler breakdown of the baseline step, pinned memory (Lightning runs pin already),
#             torch.compile lever, AuxSegNet+ (dual), fp32 with 20 steps (the periodic slow step), inference modes
#             with the torch CRF, the refresh with pydensecrf workers, the refresh with the torch CRF one image at a
#             time (against refresh_torch's one lattice per batch), CUDA graphs (compile mode reduce-overhead)
#   summary   $OUT/gpu_session.json + gpu_session.md (benchmarks/gpu_session_summary.py, after every step)
#
# Outputs (at most 8 files come back from the device machine, so everything is bundled into four):
#   $OUT/gpu_session.json    every benchmark's JSON, the step table, the verdicts against issue 13, the e2e estimate
#   $OUT/gpu_session.md      the same as a report
#   $OUT/gpu_session.log     every step's command and output, in order
#   $OUT/gpu_session_raw.tar.gz   the raw step files (JSON, logs, pytest junit XML)
# Commit gpu_session.json + gpu_session.md to benchmarks/results/ (e.g. gpu_session_h200.{json,md}) with the
# command below, and fill docs/benchmarks.md's "GPU: issue 13 targets" table from gpu_session.md.
#
# The wheel folder (DIR, first argument; default .offline) is what ../shared/gpu/fetch_wheels.sh DIR writes, here,
# where the package index is reachable:  DIR/whl/*.whl (runtime wheels), DIR/sdist/pydensecrf2-1.1.tar.gz,
# DIR/build/*.whl (Cython 0.29.36 -- the py2.py3-none-any wheel, not a cp311 one --, setuptools, wheel, packaging).
# ../shared does not travel to the device machine, so the install below repeats ../shared/gpu/setup_offline.sh's
# commands. DIR must be ignored by git (.gitignore has /.offline/) and be named in `carry`. Prepare it once here:
#   ../shared/gpu/fetch_wheels.sh .offline
#   (if it stops after the pydantic-core line -- its `grep -v` finds nothing to remove and pipefail ends the script --
#   run its last two downloads by hand; Cython with --python-version 3.12 --platform any)
#
# The device call (the `run` tool), about 9-10 minutes of the 15:
#   run(command="bash benchmarks/gpu_session.sh .offline", carry=[".offline"], timeout_s=600)
# Anywhere else:  OUT=runs/gpu_session bash benchmarks/gpu_session.sh .offline
# Knobs: BUDGET_S (seconds before no new step starts, default 540), PYTHON (default python3), WORK (default a
# fresh /tmp folder).

set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
ROOT=$(pwd)
DIR=$(realpath -m "${1:-.offline}")
OUT=$(realpath -m "${OUT:-runs/gpu_session}")
WORK=${WORK:-$(mktemp -d /tmp/gpu_session.XXXXXX)}
PY=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-540}
START=$(date +%s)
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1 WANDB_MODE=disabled WANDB_SILENT=true HF_HUB_OFFLINE=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
LOG=$OUT/gpu_session.log
: >"$LOG"

elapsed() { echo $(($(date +%s) - START)); }

bundle() {  # the four result files, refreshed after every step (a run cut short keeps what it measured)
  "$PY" benchmarks/gpu_session_summary.py "$WORK" "$OUT" >"$WORK/summary.log" 2>&1 || true
  tar -czf "$OUT/gpu_session_raw.tar.gz" -C "$WORK" . 2>/dev/null || true
}

# step NAME LIMIT_S MIN_S COMMAND...: run under `timeout` (at most LIMIT_S, never past the budget); skipped when
# fewer than MIN_S seconds of the budget are left. Records name, command, exit status, seconds in steps.jsonl.
step() {
  local name=$1 limit=$2 min=$3
  shift 3
  local left=$((BUDGET_S - $(elapsed))) status rc t0 t1
  local cmd="$*"
  if ((left < min)); then
    status=skipped rc=null t0=0 t1=0
    echo "=== [$(elapsed) s] $name: SKIPPED (budget: ${left} s left, needs ${min} s)" | tee -a "$LOG"
  else
    ((limit > left)) && limit=$left
    echo "=== [$(elapsed) s] $name (limit ${limit} s): $cmd" | tee -a "$LOG"
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$WORK/$name.log" 2>&1
    rc=$?
    t1=$(date +%s)
    case $rc in 0) status=ok ;; 124 | 137) status=timeout ;; *) status=failed ;; esac
    tail -c 6000 "$WORK/$name.log" >>"$LOG"
    echo "=== $name: $status (rc $rc, $((t1 - t0)) s)" | tee -a "$LOG"
  fi
  "$PY" -c 'import json, sys; print(json.dumps({"name": sys.argv[1], "status": sys.argv[2],
    "rc": None if sys.argv[3] == "null" else int(sys.argv[3]), "seconds": int(sys.argv[4]), "command": sys.argv[5]}))' \
    "$name" "$status" "$rc" "$((t1 - t0))" "$cmd" >>"$WORK/steps.jsonl"
  bundle
  return 0
}

# ------------------------------------------------------------------------------------------------ environment
"$PY" - >"$WORK/env.json" 2>>"$LOG" <<'EOF'
import json, platform, subprocess
from datetime import UTC, datetime
import torch
env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
       "cudnn": torch.backends.cudnn.version(), "gpus": torch.cuda.device_count(),
       "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
       "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
try:
    env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                        "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
except OSError:
    pass
print(json.dumps(env))
EOF
cat "$WORK/env.json" | tee -a "$LOG"

# ------------------------------------------------------------------------------------------------ (a) install
# = ../shared/gpu/setup_offline.sh DIR, in two parts: the wheels now, the pydensecrf2 build (about 90 s of one core)
# in the background while the GPU steps run; the steps that need pydensecrf wait for it.
step install 120 0 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$DIR"/whl/*.whl
(cd /tmp && timeout -k 10 400 "$PY" -m pip install -q --no-index --find-links "$DIR/build" --no-deps \
  --no-cache-dir "$DIR"/sdist/pydensecrf2-*.tar.gz) >"$WORK/install_pydensecrf.log" 2>&1 &
PYDENSECRF_BUILD=$!

# ------------------------------------------------------------------------------------------------ (b) training levers
TRAIN=("$PY" benchmarks/train_step.py --device cuda --backbone resnet38 --crop 321 --batch-size 8 --warmup 3
  --steps 10)
BF16CL=(--precision bf16-mixed --channels-last)
step train_pairwise_bf16_cl 150 60 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --flops \
  --variants plain,lightning,lightning-full,lightning,plain --json "$WORK/train_pairwise_bf16_cl.json"
step train_lever_cudnn_benchmark 80 40 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --cudnn-benchmark \
  --variants plain,lightning --json "$WORK/train_lever_cudnn_benchmark.json"
step train_lever_sgd_foreach 50 30 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --sgd foreach \
  --variants plain --json "$WORK/train_lever_sgd_foreach.json"
step train_lever_sgd_fused 50 30 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --sgd fused \
  --variants plain --json "$WORK/train_lever_sgd_fused.json"
step train_lever_dilated_s2b 50 30 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --dilated-conv space_to_batch \
  --variants plain --json "$WORK/train_lever_dilated_s2b.json"

# ------------------------------------------------------------------------------------------------ (c) CRF, (d) refresh
while kill -0 "$PYDENSECRF_BUILD" 2>/dev/null && (($(elapsed) < BUDGET_S - 60)); do sleep 2; done
echo "=== [$(elapsed) s] pydensecrf2 build: $(kill -0 "$PYDENSECRF_BUILD" 2>/dev/null && echo 'still running' ||
  echo finished)" | tee -a "$LOG"
cat "$WORK/install_pydensecrf.log" >>"$LOG"
step check_pydensecrf 30 0 "$PY" -c "import pydensecrf.densecrf as d; assert d.DIAG_KERNEL == 1; print('ok')"
step crf_torch 120 40 "$PY" benchmarks/crf_torch.py --device cuda --size 500x375 --images 8 --batch 4 \
  --json "$WORK/crf_torch.json"
step refresh_torch 120 40 "$PY" benchmarks/pseudo_refresh.py --device cuda --crf torch --images 32 \
  --configs 1x4,8x4,8x4+cl,8x4+cl+bf16 --json "$WORK/refresh_torch.json"

# ------------------------------------------------------------------------------------------------ (e) gpu-marked tests
mapfile -t GPU_TESTS < <(grep -l "mark.gpu" tests/test_*.py)
step pytest_gpu 240 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider --junitxml "$WORK/pytest_gpu.xml" \
  "${GPU_TESTS[@]}"

# ------------------------------------------------------------------------------------------------ the rest, if time
# The baseline without a sync after every step (a real run's queueing), fused SGD: what Lightning's own per-step
# sync (the NaN/Inf guard) costs, and the same with the guard deferred (no sync).
step train_window 90 50 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --steps 20 --timing window --sgd fused \
  --variants plain,lightning-full,lightning-full,plain --json "$WORK/train_window.json"
step train_window_deferred 60 35 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --steps 20 --timing window \
  --sgd fused --nonfinite-check deferred --variants lightning-full,lightning-full --json "$WORK/train_window_deferred.json"
step train_profile 60 35 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --steps 3 --profile 3 --variants plain \
  --json "$WORK/train_profile.json"
step train_lever_pin_memory 50 30 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --pin-memory \
  --variants plain --json "$WORK/train_lever_pin_memory.json"
step train_lever_compile 200 120 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --compile --variants plain \
  --json "$WORK/train_lever_compile.json"
step train_dual_bf16_cl 60 35 "${TRAIN[@]}" "${BF16CL[@]}" --affinity dual --variants plain,lightning \
  --json "$WORK/train_dual_bf16_cl.json"
step train_pairwise_fp32 60 35 "$PY" benchmarks/train_step.py --device cuda --backbone resnet38 --crop 321 \
  --batch-size 8 --warmup 3 --steps 20 --precision 32-true --affinity pairwise --variants plain,lightning \
  --json "$WORK/train_pairwise_fp32.json"
step inference_torch 60 30 "$PY" benchmarks/inference_modes.py --device cuda --crf torch --images 4 \
  --modes ss,ss_crf,ms,ms_flip,ms_flip_crf --json "$WORK/inference_torch.json"
step refresh_pydensecrf 60 35 "$PY" benchmarks/pseudo_refresh.py --device cuda --crf pydensecrf --images 16 \
  --configs 8x8+cl+bf16 --json "$WORK/refresh_pydensecrf.json"
step refresh_torch_loop 60 35 "$PY" benchmarks/pseudo_refresh.py --device cuda --crf torch-loop --images 32 \
  --configs 8x4+cl+bf16 --json "$WORK/refresh_torch_loop.json"
step train_lever_cuda_graphs 200 120 "${TRAIN[@]}" "${BF16CL[@]}" --affinity pairwise --compile \
  --compile-mode reduce-overhead --variants plain --json "$WORK/train_lever_cuda_graphs.json"

# ------------------------------------------------------------------------------------------------ (f) summary
bundle
cat "$WORK/summary.log" >>"$LOG"
cat "$OUT/gpu_session.md"
echo "=== done in $(elapsed) s; results in $OUT"
