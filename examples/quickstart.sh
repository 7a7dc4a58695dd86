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

echo "== 8. class control: two classes of short sentences, each ending in its own word (さくら / もみじ);"
echo "   a tiny base pretrained on them with a uniform spout, then one-hot fine-tuning with 2 added layers"
for word in さくら もみじ; do
    for round in 1 2 3 4 5 6 7 8; do
        for sentence in 今日は晴れ 明日は雨 駅まで歩く お茶を飲む 本を読む 猫が寝る 空が青い 道が長い; do
            printf '%s、%s。\n\n' "$sentence" "$word"
        done
    done > "$WORK/class-$word.txt"
done
printf 'filename,fileid\nclass-さくら.txt,0\nclass-もみじ.txt,1\n' > "$WORK/classes.csv"
"$PYTHON" encode_swe.py records --input "$WORK/classes.csv" --output "$WORK/class-records" --mode lm \
    --num_context 32 --num_shards 1 --overwrite
"$PYTHON" encode_swe.py records --input "$WORK/classes.csv" --output "$WORK/class-hybrid" --mode hybrid \
    --hybrid_rate 0.5 --num_context 32 --num_shards 1 --overwrite
"$PYTHON" encode_swe.py records --input "$WORK/classes.csv" --output "$WORK/class-ft" --mode lm \
    --num_context 32 --num_shards 1 --whole_documents --overwrite
cat > "$WORK/class-tiny.json" <<'JSON'
{"model_params": {"num_contexts": 32, "num_switch_layers": 2, "num_ext_layers": 0, "num_hidden": 32,
                  "num_header": 4, "num_experts": 4, "num_pallarelizm": 1, "num_vocabulary": 36000,
                  "train_mode": "hybrid", "num_spout": 8}}
JSON
"$PYTHON" run_pretrain.py --parameter_file "$WORK/class-tiny.json" --model_dir "$WORK/class-base" \
    --input_files "$WORK/class-records" "$WORK/class-hybrid" --spout_vector uniform --batch_size 4 \
    --learning_rate 1e-2 --warmup_steps 10 --max_steps 200 --no_progress
echo "   [MASK] filled by the base, on text it has learned:"
"$PYTHON" run_languagemodel.py --model "$WORK/class-base" --context "今日は晴れ、[MASK]。" \
    --output "$WORK/class-mask.json" --overwrite > /dev/null
"$PYTHON" -c "import json, sys; print('   今日は晴れ、[MASK]。 ->', json.load(open(sys.argv[1]))['output_text'])" \
    "$WORK/class-mask.json"
"$PYTHON" run_finetune.py --base_model "$WORK/class-base" --output "$WORK/classes" --add_layers 2 \
    --input_files "$WORK/class-ft" --spout_vector onehot --batch_size 8 --learning_rate 3e-3 \
    --warmup_steps 20 --max_steps 600 --no_progress

echo "== 9. the same prompts and seed with --spout 0 and --spout 1, side by side"
for k in 0 1; do
    for prompt in 今日は晴れ、 本を読む、; do
        "$PYTHON" run_generate.py --model "$WORK/classes" --spout "$k" --context "$prompt" --num_generate 3 \
            --max_generate 8 --seed 1 --no_stream
    done | grep '^====' | sed 's/^====\[[a-z_]*\] //' > "$WORK/class$k.txt"
done
"$PYTHON" - "$WORK" <<'PY'
import sys, unicodedata
def pad(text, width=28):   # display width: full-width characters count 2
    used = sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)
    return text + " " * max(width - used, 0)
columns = [open(f"{sys.argv[1]}/class{k}.txt", encoding="utf-8").read().split("\n")[:6] for k in (0, 1)]
print(pad("--spout 0") + "| --spout 1")
for left, right in zip(*columns):
    print(pad(left) + "| " + right)
PY

echo "quick start finished: records, models and outputs are in $WORK."
