#!/usr/bin/env bash
# The CUDA path, checked on a GPU host (run by hand or through the device tool):
# AMP bf16 / fp16 (grad scaler) / off, channels_last on/off, pinned memory, re-evaluation of a
# checkpoint on the GPU, and the metric-sync benchmark. Writes a summary to ${OUT:-bench/results}.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH=$PWD TEACHER_DATA_ROOT=${TMPDIR:-/tmp}/teacher-data TEACHER_RUNS_ROOT=${TMPDIR:-/tmp}/teacher-runs
rm -rf "$TEACHER_DATA_ROOT" "$TEACHER_RUNS_ROOT"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
$PY -m common.apps.cli make-data --classes 24 --train-per-class 200 --val-per-class 40 --image-size 64
common=(--config configs/demo.yaml --set runtime.device=cuda --set data.image_size=64 --set runtime.num_workers=6
        --set optim.epochs=4 --set optim.batch_size=128 --set runtime.log_interval=10)
for variant in bf16:auto fp16:auto off:auto bf16:off; do
  amp=${variant%%:*}; cl=${variant##*:}
  $PY -m common.apps.cli train "${common[@]}" --set runtime.amp=$amp --set runtime.channels_last=$cl \
      --run-dir "$TEACHER_RUNS_ROOT/amp-$amp-cl-$cl" > "$OUT/train-$amp-$cl.log" 2>&1 || { tail -30 "$OUT/train-$amp-$cl.log"; exit 1; }
  grep -E "device cuda|Epoch 4/4" "$OUT/train-$amp-$cl.log" | cut -c21-
done
# Every GPU of the host in one job (torchrun, NCCL, DDP), with SyncBatchNorm, same global batch.
NGPU=$($PY -c 'import torch; print(torch.cuda.device_count())')
$PY -m common.apps.cli train "${common[@]}" --set resources.gpus=$NGPU --set runtime.sync_bn=true \
    --run-dir "$TEACHER_RUNS_ROOT/ddp-$NGPU-gpus" > "$OUT/train-ddp-$NGPU.log" 2>&1 || { tail -30 "$OUT/train-ddp-$NGPU.log"; exit 1; }
grep -E "processes \(nccl\)|Epoch 4/4" "$OUT/train-ddp-$NGPU.log" | cut -c21-
# its recorded validation against a fresh single-GPU evaluation of its last epoch's checkpoint
$PY -m common.apps.cli evaluate "$TEACHER_RUNS_ROOT/ddp-$NGPU-gpus/checkpoints/epoch_0004.pt" --device cuda | tee "$OUT/evaluate-ddp.json"
$PY -m common.apps.cli evaluate "$TEACHER_RUNS_ROOT/amp-bf16-cl-auto/checkpoints/best.pt" --device cuda | tee "$OUT/evaluate.json"
$PY - <<'PY' | tee "$OUT/cuda_summary.json"
import json, os, pathlib
root = pathlib.Path(os.environ["TEACHER_RUNS_ROOT"])
out = {}
for run in sorted(root.iterdir()):
    h = json.loads((run / "history.json").read_text())
    p = json.loads((run / "progress.json").read_text())
    last = h["epochs"][-1]
    out[run.name] = {
        "val_top1": last["val"]["top1"], "val_loss": last["val"]["loss"],
        "train_img_per_s_last_epoch": last["train"]["throughput"],
        "nonfinite": [e["nonfinite"] for e in h["epochs"] if e["nonfinite"]],
        "integrity": p.get("integrity"), "status": p["status"],
    }
base = out["amp-off-cl-auto"]["train_img_per_s_last_epoch"]

for k, v in out.items():
    v["throughput_ratio_vs_amp_off"] = v["train_img_per_s_last_epoch"] / base
print(json.dumps(out, indent=2))
PY
$PY -m bench.metrics_sync --device cuda --out "$OUT/metrics_sync.json"
