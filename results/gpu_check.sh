#!/usr/bin/env bash
# What a CUDA machine checks, in one go (about 5 minutes on one H100 or H200). It needs no
# network and no pretrained weights: bert-base's shape runs with random weights, and only a
# tokenizer folder is read (the default encoder's: the same uncased 30,522 words as bert-base).
#
#   bash results/gpu_check.sh OUT_DIR TOKENIZER_DIR [DATA_DIR]
#
#   1. tests.xml        the tests that need CUDA (test_dropmix.py -k cuda): eq. 4 and eq. 5 on
#                       the GPU against the literal loops, and training on CUDA (fp32, bf16)
#                       that stops, resumes, saves and reloads through pipeline()
#   2. bench.md         results/bench.py at bert-base's shape (batch 32, every batch padded to
#                       128 tokens), every variant, fp32 and bf16
#   3. mask.md          results/bench.py --mask on the GPU: patch_mask alone for every
#                       variant on random maps, (32, 128, 384) and bert-base's (32, 128, 768)
#   4. train-*.json     two epochs of all of TREC through train.py at bert-base's shape (random
#                       weights, so the accuracy means nothing; the loss and s/step do): dropout
#                       and G, and G under torchrun (one process, NCCL)
#   gpu_check.log       everything printed, with each step's exit status and seconds
#
# A failed step does not stop the next; the script's exit status counts the failed steps.
set -u
out=${1:?usage: bash results/gpu_check.sh OUT_DIR TOKENIZER_DIR [DATA_DIR]}
tokenizer=${2:?usage: bash results/gpu_check.sh OUT_DIR TOKENIZER_DIR [DATA_DIR]}
data_dir=${3:-${DROPMIX_DATA:-}}
mkdir -p "$out"
absolute() { (cd "$1" 2>/dev/null && pwd) || echo "$1"; }  # the paths hold after the cd below
out=$(absolute "$out") tokenizer=$(absolute "$tokenizer")
[ -z "$data_dir" ] || export DROPMIX_DATA=$(absolute "$data_dir")
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
exec > >(tee -a "$out/gpu_check.log") 2>&1
python3 -c "import torch; assert torch.cuda.is_available()" ||
    { echo "error: torch sees no CUDA device here."; exit 2; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, '| transformers', transformers.__version__)"

failed=0
step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under a time limit, say how it ended
    local name=$1 limit=$2 start=$SECONDS
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

step tests 240 python3 -m pytest -q -rs test_dropmix.py -k cuda -p no:cacheprovider \
    --junitxml="$out/tests.xml"
step bench 300 sh -c "python3 results/bench.py --task trec --steps 30 --shape bert-base \
    --model '$tokenizer' --device cuda > '$out/bench.md'; rc=\$?; cat '$out/bench.md'; exit \$rc"
step mask 120 sh -c "python3 results/bench.py --mask --device cuda > '$out/mask.md'; rc=\$?; \
    cat '$out/mask.md'; exit \$rc"

# bert-base's shape with random weights, saved where train.py can load it like any checkpoint
model=$(mktemp -d)/bert-base-random
step model 120 python3 - "$tokenizer" "$model" <<'EOF'
import sys
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
torch.manual_seed(0)
BertForSequenceClassification(BertConfig(num_labels=6)).save_pretrained(sys.argv[2])
AutoTokenizer.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2])
EOF
runs=$(mktemp -d)
common=(--task trec --model "$model" --epochs 2 --no-progress --no-save-model --device cuda)
step train-dropout 150 python3 train.py "${common[@]}" --variant dropout --output-dir "$runs/dropout"
step train-G 150 python3 train.py "${common[@]}" --variant G --alpha 0.25 --output-dir "$runs/G"
step train-G-torchrun 150 python3 -m torch.distributed.run --nproc_per_node 1 train.py \
    "${common[@]}" --variant G --alpha 0.25 --output-dir "$runs/G-torchrun"
for name in dropout G G-torchrun; do
    cp "$runs/$name/seed-1/results.json" "$out/train-$name.json" 2>/dev/null
done
echo "== $failed step(s) failed"
exit "$failed"
