#!/usr/bin/env bash
# Quick start: the whole GPTSAN path on the sample corpus with a tiny model, on a laptop CPU.
# Each step is added here as its piece of the toolkit lands; the script must always run to the end.
#   bash examples/quickstart.sh [WORK_DIR]      (default WORK_DIR: ./quickstart-work)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
WORK=${1:-quickstart-work}
mkdir -p "$WORK"

echo "== 1. tokenize: text -> ids -> text (encode_swe.py)"
echo "今日は駅前の新しいパン屋でメロンパンを買いました😊" > "$WORK/hello.txt"
"$PYTHON" encode_swe.py encode "$WORK/hello.txt" | tee "$WORK/hello.ids.json"
"$PYTHON" encode_swe.py decode "$WORK/hello.ids.json"

echo "== 2. corpus statistics of the sample corpus"
"$PYTHON" encode_swe.py stats examples/corpus/*.txt

echo "quick start finished. Records, pretraining, generation, [MASK] filling and fine-tuning join this script as they land."
