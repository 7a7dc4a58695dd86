#!/usr/bin/env bash
# Quick start: the whole GPTSAN path on the sample corpus with a tiny model, on a laptop CPU.
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

echo "== 3. training records (hybrid prefix-LM, 128 tokens each)"
"$PYTHON" encode_swe.py records --input examples/corpus/*.txt --output "$WORK/records" --mode hybrid \
    --num_context 128 --hybrid_rate 0.3 --num_shards 2 --overwrite

echo "== 4. pretrain a tiny model for 200 steps (rerun the same command to resume)"
cat > "$WORK/tiny.json" <<'JSON'
{"train_params": {"batch_size": 8, "base_lr": 2e-3, "num_warmup_steps": 20},
 "model_params": {"num_contexts": 128, "num_switch_layers": 2, "num_ext_layers": 0, "num_hidden": 64,
                  "num_header": 4, "num_experts": 4, "num_pallarelizm": 1, "num_vocabulary": 36000,
                  "train_mode": "hybrid", "num_spout": 16}}
JSON
"$PYTHON" run_pretrain.py --parameter_file "$WORK/tiny.json" --model_dir "$WORK/model" \
    --input_files "$WORK/records/*.tfrecord" --max_steps 200 --save_every 100 --spout_vector uniform

echo "== 5. release copy without optimizer slots"
"$PYTHON" run_pretrain.py --model_dir "$WORK/model" --export "$WORK/release" --overwrite

echo "== 6. generate (KV cache, top-p, a bidirectional prefix)"
"$PYTHON" run_generate.py --model "$WORK/release" --prefix "料理" --context "今日は" --max_generate 40 \
    --top_p 0.9 --seed 1 --output "$WORK/generated.jsonl" --overwrite

echo "== 7. fill [MASK] and export per-layer vectors"
"$PYTHON" run_languagemodel.py --model "$WORK/release" --context "今日は[MASK]を買いました。" \
    --output "$WORK/mask.json" --overwrite

echo "== 8. class-controlled fine-tuning: the corpus's five styles (classes.csv), one-hot spout, 2 added layers"
"$PYTHON" encode_swe.py records --input examples/corpus/classes.csv --output "$WORK/class-records" --mode lm \
    --num_context 128 --num_shards 1 --overwrite
"$PYTHON" run_finetune.py --base_model "$WORK/release" --output "$WORK/styles" --add_layers 2 \
    --input_files "$WORK/class-records/*.tfrecord" --spout_vector onehot --batch_size 8 --max_steps 150 \
    --learning_rate 2e-3 --warmup_steps 10 --save_every 150

echo "== 9. generate in style 2 (recipes) and style 3 (dialogue)"
echo "   (a model trained for a few minutes writes mostly noise: this shows the path; tests/test_finetune.py"
echo "    measures class control on a task a tiny model can learn)"
for style in 2 3; do
    "$PYTHON" run_generate.py --model "$WORK/styles" --spout "$style" --max_generate 40 --top_p 0.9 --seed 1 \
        --output "$WORK/style$style.jsonl" --overwrite
done

echo "quick start finished: records, models and outputs are in $WORK."
