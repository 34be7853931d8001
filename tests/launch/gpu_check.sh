#!/usr/bin/env bash
# GPU-machine checks for `mdeq launch` (run by the lead on a CUDA machine; ~1-2 min):
#   bash tests/launch/gpu_check.sh
# 1. preflight counts GPUs (not cores) when CUDA is present: --nproc GPUS+1 is refused with exit 2;
# 2. the DeepSpeed form passes no --num_accelerators when GPUs are visible;
# 3. one real local launch trains the tiny MDEQ on the GPU(s) via torchrun (NCCL), per-rank logs written.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
GPUS=$($PY -c "import torch; print(torch.cuda.device_count())")
echo "GPUs visible: $GPUS"
[ "$GPUS" -ge 1 ] || { echo "no CUDA GPU visible"; exit 1; }

set +e
ERR=$($PY -m launch.cli.main launch local --nproc $((GPUS + 1)) --script tests/launch/scripts/print_env.py 2>&1 >/dev/null)
CODE=$?
set -e
echo "nproc $((GPUS + 1)): exit $CODE: $ERR"
[ "$CODE" = 2 ] && grep -q "CUDA GPU" <<<"$ERR"

WORK=$(mktemp -d)
echo "localhost slots=$GPUS" > "$WORK/hostfile"
$PY -m launch.cli.main launch deepspeed --hostfile "$WORK/hostfile" --dry-run --script tests/launch/scripts/print_env.py \
  | tee "$WORK/ds.txt" | tail -1
! grep -q -- "--num_accelerators" "$WORK/ds.txt"

$PY - "$WORK" <<'PYEOF'
import sys
from pathlib import Path
import data_pipelines as data
root = Path(sys.argv[1])
data.synth_imagenet(root / "raw", classes=4, train_per_class=16, val_per_class=2, size=32, seed=0)
data.write_imagenet_shards(root / "raw", root / "train", split="train", samples_per_shard=4, progress=False)
data.write_imagenet_shards(root / "raw", root / "val", split="val", samples_per_shard=4, progress=False)
PYEOF
START=$(date +%s)
$PY -m launch.cli.main launch local --nproc "$GPUS" --max-restarts 0 --log-dir "$WORK/logs" -- train \
  --config configs/quickstart.yaml --set model.num_classes=4 --set data.train_shards="$WORK/train" --set data.val_shards="$WORK/val" \
  --set data.workers=1 --set train.max_steps=20 --set train.eval_every=0 --set checkpoint.dir="$WORK/ckpt" \
  --set checkpoint.every_steps=10 --set tracking.uri="sqlite:///$WORK/mlflow.db"
echo "local GPU launch: $(( $(date +%s) - START )) s; per-rank logs: $(ls "$WORK/logs")"
grep -h "cuda\|device" "$WORK/logs/rank-0.log" | head -3 || true
ls "$WORK/ckpt"
echo "gpu_check: OK"
