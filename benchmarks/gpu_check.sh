#!/usr/bin/env bash
# The CUDA checks and GPU figures in BENCHMARKS.md ("On a GPU"), as one script run by hand on a machine
# with an NVIDIA GPU, from the repository root, with torch already installed:
#
#     OUT=/tmp/gpu_check bash benchmarks/gpu_check.sh            # all sections
#     SECTIONS="cli bench" bash benchmarks/gpu_check.sh          # some of them
#
# Sections: env, cli (train bf16 / fp16 / resume / sample / torchrun NCCL), bench (bench_gpu.py at the presets'
# sizes), bench32 (the paper's CIFAR-10 network at 32 px: batches 128-512, fp32/bf16, channels_last and
# torch.compile, ours vs diffusers; then the Trainer itself on that preset, from the CLI),
# sweep (bench_quality.py configurations at fixed image budgets, run in parallel on the GPU) and
# tests (the non-GUI test files, with CUDA visible). Logs go to $OUT. The package is used from the
# checkout (PYTHONPATH), so nothing needs installing beyond torch, numpy, pillow, safetensors, tqdm
# (and diffusers for the comparisons). DRY=1 runs everything tiny on the CPU to test this script.
set -u
OUT=${OUT:-/tmp/gpu_check}
PY=${PYTHON:-python3}
SECTIONS=${SECTIONS:-"env cli bench sweep tests"}
BENCH32_SEC=${BENCH32_SEC:-110}    # the eager rows of bench32
COMPILE_SEC=${COMPILE_SEC:-170}    # its torch.compile rows (compilation included)
TRAIN_SEC=${TRAIN_SEC:-150}        # its Trainer run with --compile (the eager one gets 60 s)
SWEEP_SEC=${SWEEP_SEC:-240}
JOBS=${JOBS:-10}
DRY=${DRY:-0}
QDIR=${QDIR:-/tmp/gpu_q}  # bench_quality's --out (glyphs and classifiers may be copied in beforehand)
mkdir -p "$OUT" "$QDIR"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export DDPM_STUDIO_CACHE_DIR=/tmp/dds/cache DDPM_STUDIO_CONFIG_DIR=/tmp/dds/config DDPM_STUDIO_DATA_DIR=/tmp/dds/data
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
DEV=cuda PREC=bf16 FP16=fp16 STEPS=600 MORE=800 DDP_STEPS=200
if [ "$DRY" = 1 ]; then DEV=cpu PREC=fp32 FP16=fp32 STEPS=6 MORE=8 DDP_STEPS=4; fi
R=/tmp/gpu_runs
rm -rf "$R"; mkdir -p "$R"
section() { echo; echo "=== $1 ($(date +%T))"; }
has() { case " $SECTIONS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ddpm() { timeout "$1" "$PY" -m ddpm_studio "${@:2}"; echo "[exit $?] ddpm-studio ${*:2}"; }

if has env; then
  section env
  nvidia-smi -L 2>/dev/null
  "$PY" -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
  "$PY" -c "import diffusers; print('diffusers', diffusers.__version__)" 2>&1 | tail -1
fi

if has cli; then
  section "cli: bf16 training, checkpoint, resume, sample"
  ddpm 120 train --out "$R/bf16" --device "$DEV" --precision "$PREC" --steps "$STEPS" --checkpoint-every $((STEPS / 2)) \
      --preview-every $((STEPS / 2)) --log-every 50 --quiet
  ddpm 120 train --out "$R/bf16" --resume --steps "$MORE" --quiet
  ddpm 60 info "$R/bf16"
  tail -n 2 "$R/bf16/metrics.jsonl"
  ddpm 60 sample --run "$R/bf16" --out "$R/bf16_samples" --num 64 --device "$DEV" --grid "$OUT/grid_bf16.png"
  section "cli: fp16 training (GradScaler)"
  ddpm 120 train --out "$R/fp16" --device "$DEV" --precision "$FP16" --steps "$STEPS" --log-every 100 --quiet
  tail -n 1 "$R/fp16/metrics.jsonl"
  section "cli: torchrun, one process per GPU (NCCL on CUDA)"
  timeout 120 "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 -m ddpm_studio train --out "$R/ddp" --device "$DEV" \
      --precision "$PREC" --steps "$DDP_STEPS" --log-every 100 --quiet; echo "[exit $?] torchrun"
  "$PY" -c "import json,sys; i=json.load(open('$R/ddp/run.json')); print('run.json sessions', i['sessions'])" 2>&1
fi

if has bench; then
  section "bench_gpu"
  if [ "$DRY" = 1 ]; then echo "(dry run: bench_gpu needs CUDA)"; else
    timeout 200 "$PY" benchmarks/bench_gpu.py --steps 20 --repeats 2 2>&1 | tee "$OUT/bench_gpu.txt"
  fi
fi

if has bench32; then
  # The paper's network at 32 px on the GPU; DRY=1: the tiny preset at 8 px on the CPU (checks the script).
  B32=(--presets ddpm-cifar10 --steps 10 --repeats 2 --jsonl "$OUT/bench32.jsonl")
  BATCHES=(128 256 512) CBATCH=256 TSTEPS=300 TLOG=50 TEXTRA=()
  if [ "$DRY" = 1 ]; then
    B32=(--presets tiny --image-size 8 --steps 1 --repeats 1 --device cpu --jsonl "$OUT/bench32.jsonl")
    BATCHES=(2) CBATCH=2 TSTEPS=4 TLOG=2 TEXTRA=(--image-size 8 --base-channels 8)
  fi
  section "bench32: the paper's CIFAR-10 network at 32 px, eager and channels_last"
  timeout "$BENCH32_SEC" "$PY" benchmarks/bench_gpu.py "${B32[@]}" --batches "${BATCHES[@]}" \
      --precisions fp32 bf16 --variants eager cl --sample-num 256 2>&1 | tee "$OUT/bench32.txt"
  section "bench32: the same with cudnn.benchmark on"
  timeout 50 "$PY" benchmarks/bench_gpu.py "${B32[@]}" --batches "$CBATCH" --cudnn-benchmark \
      --precisions fp32 bf16 --variants eager cl --sample-num 0 2>&1 | tee "$OUT/bench32_cudnn.txt"
  section "bench32: torch.compile (the warm-up column holds the compilation)"
  timeout "$COMPILE_SEC" "$PY" benchmarks/bench_gpu.py "${B32[@]}" --batches "$CBATCH" \
      --precisions bf16 fp32 --variants compile --sample-num 0 2>&1 | tee "$OUT/bench32_compile.txt"
  for c in "" --compile; do
    section "bench32: the Trainer, ddpm-cifar10 preset, built-in shapes at 32 px, $PREC ${c:-eager}"
    ddpm "$([ -n "$c" ] && echo "$TRAIN_SEC" || echo 60)" train --out "$R/cifar$c" --preset ddpm-cifar10 --device "$DEV" --precision "$PREC" \
        --steps "$TSTEPS" --log-every "$TLOG" --preview-every 0 --checkpoint-every 0 --quiet $c "${TEXTRA[@]}"
    "$PY" -c "import json; r=[json.loads(l) for l in open('$R/cifar$c/metrics.jsonl')]; \
print('images/s per log:', [round(x['images_per_sec']) for x in r], 'loss', round(r[-1]['loss'], 4))" 2>&1 | tail -n 1
  done
fi

# One line per bench_quality job: "data tag images seed args...". Image budgets are per config,
# scaled by its CPU cost per image relative to the tiny preset (measured on CPU, 1 thread), so that
# each budget stands for the same CPU time. SWEEP_CONFIGS=FILE replaces the list (one "tag|ratio|args" a line);
# SEEDS="0 1" sets the seeds.
sweep_jobs() {
  local b1=14000 b2=42000
  [ "$DRY" = 1 ] && b1=64 b2=96
  local cfgs
  if [ -n "${SWEEP_CONFIGS:-}" ]; then mapfile -t cfgs <"$SWEEP_CONFIGS"; else cfgs=(
    "preset|1|"
    "diffusers|1|--recipe diffusers"
    "lr1e-3|1|--set train.lr=1e-3"
    "lr4e-3|1|--set train.lr=4e-3"
    "ema999|1|--set train.ema_decay=0.999"
    "simple|1|--set diffusion.loss_weighting=none"
    "vpred|1|--set diffusion.prediction=v"
    "b16|0.87|--set train.batch_size=16"
    "b64|1.1|--set train.batch_size=64"
    "w48|0.51|--set model.base_channels=48"
    "w24|1.52|--set model.base_channels=24"
    "rb2|0.63|--set model.num_res_blocks=2"
    "m124|0.74|--set model.channel_mult=[1,2,4]"
    "ema99|1|--set train.ema_decay=0.99"
  ); fi
  for seed in ${SEEDS:-0 1}; do
    for b in $b1 $b2; do
      for c in "${cfgs[@]}"; do
        IFS='|' read -r tag ratio args <<<"$c"
        n=$("$PY" -c "print(int($b * $ratio))")
        for data in shapes glyphs; do echo "$data ${tag}_i${b}_s$seed $n $seed${args:+ $args}"; done
      done
    done
  done
}

one_job() {  # one line: data tag images seed args...
  set -- $1
  local data=$1 tag=$2 n=$3 seed=$4; shift 4
  "$PY" benchmarks/bench_quality.py --data "$data" --tag "$tag" --images "$n" --seed "$seed" --device "$DEV" \
      --num 128 --out "$QDIR" "$@" >"$QDIR/log_${data}_$tag.txt" 2>&1 || echo "FAILED $data $tag: $(tail -n 1 "$QDIR/log_${data}_$tag.txt")"
}
export -f one_job; export PY DEV QDIR

if has sweep; then
  section "sweep: $(sweep_jobs | wc -l) jobs, $JOBS at a time, stopped after ${SWEEP_SEC}s"
  ( cd benchmarks && "$PY" -c "import bench_quality" ) || echo "bench_quality does not import"
  sweep_jobs | timeout "$SWEEP_SEC" xargs -P "$JOBS" -d '\n' -n 1 bash -c 'one_job "$1"' _ &
  SWEEP_PID=$!
fi

if has tests; then
  section "tests (non-GUI files, CUDA visible)"
  timeout 200 "$PY" -m pytest -q -p no:cacheprovider tests/test_engine_*.py tests/test_training_*.py \
      tests/test_sampling_*.py tests/test_interop_format.py tests/test_interop_diffusers.py tests/test_data_loader.py \
      tests/test_cli_commands.py 2>&1 | tail -n 25
fi

if has sweep; then
  wait "$SWEEP_PID"
  section "sweep results"
  "$PY" benchmarks/bench_quality.py --summary --out "$QDIR" | tee "$OUT/sweep_summary.md" | wc -l
  cp "$QDIR/results.jsonl" "$OUT/sweep_results.jsonl" 2>/dev/null
  (cd "$QDIR" && tar czf "$OUT/sweep_grids.tgz" grid_*.png 2>/dev/null)
fi
section done
