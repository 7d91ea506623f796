#!/usr/bin/env bash
# Issue 14's GPU figures in one run, for a lent GPU (an H200, 16 CPU cores): the steps' time limits add up to
# 530 s (30 + 110 + 240 + 150), so the whole script ends inside 9 minutes even when every step hits its limit.
#
#   1. torch / CUDA / GPU / CPU info                                        -> env.json
#   2. the input pipeline alone, every decode option, and resnet50's own
#      images/s at 224 px (bench/decode_options.py)                        -> decode_options.json
#   3. teacher train against the plain AMP loop, bf16 + channels_last,
#      resnet50 at 224 px, batch 128, --reps 2 (bench/train_throughput.py) -> train_throughput_cuda.json
#   4. the same config once with runtime.compile: true (cold TorchInductor
#      cache): first step, first eval batch, steady epochs                 -> compile.json
#   5. a summary of all of it                                               -> gpu_check_summary.json
# Every step's output goes to gpu_check.log. Each step runs under `timeout`, so one slow step
# cannot eat the others' time; a step that fails or times out is recorded as such in the summary
# and the next one runs. Everything is written under ${OUT:-bench/results} (the device tool
# brings $OUT back: at most 8 files; this writes 6).
#
# The device machine's python3 holds torch and torchvision but not this project's pure-Python
# needs (marshmallow, environs, python-dotenv). Carry them as wheels in .whl/ (once, on the
# machine with the checkout, from the repository root):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl marshmallow==3.26.2 environs==14.6.0 python-dotenv==1.2.4
# and run (device tool: carry [".whl"], timeout_s 600):
#   PYTHONUNBUFFERED=1 bash bench/gpu_check.sh
# This script installs .whl/*.whl into /tmp/site itself when .whl/ exists.
#
# GPU_CHECK_SMOKE=1 bash bench/gpu_check.sh runs tiny versions of every step on the CPU (a
# minute or two; torch.compile disabled by TORCH_COMPILE_DISABLE=1): it tests the script, it
# measures nothing.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/gpu_check.log"
: > "$LOG"
SMOKE=${GPU_CHECK_SMOKE:-0}
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-XXXXXX")
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" TEACHER_LOG_FORMAT=text
declare -A STATUS SECONDS_OF

say() { echo "== $*" | tee -a "$LOG"; }

# step NAME LIMIT_S COMMAND...: run it under timeout, its output appended to the log.
step() {
  local name=$1 limit=$2; shift 2
  say "$name (limit ${limit}s): $*"
  local t0=$SECONDS rc
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  rc=$?
  SECONDS_OF[$name]=$((SECONDS - t0))
  case $rc in
    0) STATUS[$name]=ok ;;
    124|137) STATUS[$name]="timed out after ${limit}s" ;;
    *) STATUS[$name]="failed (exit $rc)" ;;
  esac
  say "$name: ${STATUS[$name]} in ${SECONDS_OF[$name]}s"
}

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl >> "$LOG" 2>&1 \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
if ! $PY -c 'import marshmallow, environs, dotenv, yaml, click, torch, torchvision' >> "$LOG" 2>&1; then
  say "missing Python packages for this project (see the header of bench/gpu_check.sh: carry .whl/)"
  tail -3 "$LOG"
  exit 2
fi

if [ "$SMOKE" = 1 ]; then
  DEVICE=cpu
  DECODE_ARGS=(--smoke)
  TRAIN_ARGS=(--smoke --reps 1)
  export TORCH_COMPILE_DISABLE=1
else
  DEVICE=cuda
  DECODE_ARGS=(--images 512 --batch 128 --reps 2)
  TRAIN_ARGS=(--amp bf16 --channels-last --reps 2)
fi

# 1. the machine
step env 30 $PY - "$OUT/env.json" <<'PY'
import json, os, platform, subprocess, sys
import torch, torchvision, PIL
cuda = torch.cuda.is_available()
info = {"python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
        "pil": PIL.__version__, "cuda_available": cuda, "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(),
        "cpus": os.cpu_count(), "platform": platform.platform(),
        "loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None}
if cuda:
    p = torch.cuda.get_device_properties(0)
    info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), sm_count=p.multi_processor_count,
                bf16=torch.cuda.is_bf16_supported(), gpus=torch.cuda.device_count())
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.sm,clocks.max.sm",
                                             "--format=csv,noheader"], capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        info["nvidia_smi"] = repr(exc)
print(json.dumps(info, indent=2))
open(sys.argv[1], "w").write(json.dumps(info, indent=2))
PY

# 2. the input pipeline and the model's own rate
step decode_options 110 $PY -m bench.decode_options "${DECODE_ARGS[@]}" --out "$OUT/decode_options.json"

# 3. teacher train against the plain AMP loop (keeps its data and configs for step 4)
step train_throughput 240 $PY -m bench.train_throughput --device $DEVICE "${TRAIN_ARGS[@]}" --only resnet50-224 \
  --work "$WORK/tt" --out "$OUT/train_throughput_cuda.json"

# 4. runtime.compile: true once, on the same data and config, a cold TorchInductor cache
COMPILE_RUN="$WORK/compiled"
if [ -f "$WORK/tt/resnet50-224/config-compiled.yaml" ]; then
  if [ "$DEVICE" = cuda ]; then
    DEV_SET=(--set runtime.device=cuda --set runtime.amp=bf16 --set runtime.channels_last=on)
  else
    DEV_SET=()
  fi
  TEACHER_DATA_ROOT="$WORK/tt/resnet50-224/data" TEACHER_RUNS_ROOT="$WORK" TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" \
    step compile 150 $PY -m common.apps.cli train --config "$WORK/tt/resnet50-224/config-compiled.yaml" \
      --run-dir "$COMPILE_RUN" "${DEV_SET[@]}"
else
  STATUS[compile]="skipped: step 3 left no config"; SECONDS_OF[compile]=0
  say "compile: ${STATUS[compile]}"
fi

# 5. the summary (also of what a step that timed out left)
{
  for k in env decode_options train_throughput compile; do
    printf '%s\t%s\t%s\n' "$k" "${STATUS[$k]:-not run}" "${SECONDS_OF[$k]:-0}"
  done
} > "$WORK/status.tsv"
$PY - "$OUT" "$WORK/status.tsv" "$COMPILE_RUN" "$SMOKE" <<'PY' 2>&1 | tee -a "$LOG"
import json, re, statistics, sys
from pathlib import Path
out, status_file, compile_run, smoke = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"

def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None

summary = {"smoke": smoke, "steps": {}}
for line in status_file.read_text().splitlines():
    k, st, s = line.split("\t")
    summary["steps"][k] = {"status": st, "seconds": int(s)}
env = load("env.json")
summary["machine"] = env and {k: env.get(k) for k in ("gpu", "torch", "cuda", "cpus", "nvidia_smi")}
dec = load("decode_options.json")
if dec:
    v = dec["variants"]
    summary["decode"] = {"verdict": dec["verdict"], "model": dec["model"],
                         "img_per_s_median": {k: round(r["img_per_s"]["median"]) for k, r in v.items()},
                         "epoch2_first_batch_s": {k: round(r["first_batch_s_2"]["median"], 3) for k, r in v.items()},
                         "epoch_gap_s": {k: round(r["gap_s"]["median"], 3) for k, r in v.items()}}
tt = load("train_throughput_cuda.json")
teacher_steady = None
if tt and "resnet50-224" in tt:
    r = tt["resnet50-224"]
    summary["train_throughput"] = {"device": r["device"], "amp": r.get("amp"), "channels_last": r.get("channels_last"),
                                   "whole_run_ratio": r["throughput_ratio"], "steady_train_ratio": r["steady_train_ratio"],
                                   "median_wall_s": {s: m["wall_s"] for s, m in r["median"].items()},
                                   "plain_args": r["plain_args"], "teacher_args": r["teacher_args"]}
    teacher_steady = statistics.median(x for t in r["runs"]["teacher"] for x in t["train_throughput"][1:])
    summary["train_throughput"]["steady_img_per_s"] = {
        "teacher": teacher_steady,
        "plain": statistics.median(x for p in r["runs"]["plain"] for x in p["train_throughput"][1:])}
comp = {"run_dir_complete": (compile_run / "history.json").exists()}
log = compile_run / "train.log"
if log.exists():
    text = log.read_text()
    for what, secs in re.findall(r"the first (training step|evaluation batch) took ([0-9.]+)s \(compiling\)", text):
        comp[f"first_{what.split()[0]}_s"] = float(secs)
    comp["train_log_tail"] = text.splitlines()[-5:]
if comp["run_dir_complete"]:
    epochs = json.loads((compile_run / "history.json").read_text())["epochs"]
    comp["train_throughput"] = [e["train"]["throughput"] for e in epochs]
    comp["epoch_s"] = [e["epoch_time_s"] for e in epochs]
    steady = comp["train_throughput"][1:]
    if steady and teacher_steady:
        comp["steady_img_per_s"] = statistics.median(steady)
        comp["steady_ratio_compiled_over_teacher"] = statistics.median(steady) / teacher_steady
(out / "compile.json").write_text(json.dumps(comp, indent=2))
summary["compile"] = {k: v for k, v in comp.items() if k != "train_log_tail"}
(out / "gpu_check_summary.json").write_text(json.dumps(summary, indent=2))
print(json.dumps(summary, indent=2))
PY
rm -rf "$WORK"
ls -la "$OUT"
