"""Class-control tasks for spout fine-tuning (issue 16), shared by tests/test_finetune.py and
benchmarks/bench_class_control.py.

A task is two classes of short texts built from the same sentences, each class with its own marker
words, so that only the spout can tell which marker comes. A base is pretrained on the task's texts in
one of three ways (release-style spout init, uniform spout, no spout), fine-tuned with one-hot spouts,
and ``run_generate.py --spout K`` is asked to write: the share of samples with class K's marker (and
not the other's) is the figure.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from model_dirs import TINY

REPO = Path(__file__).resolve().parents[1]
SENTENCES = ("今日は晴れ", "明日は雨", "駅まで歩く", "お茶を飲む", "本を読む", "猫が寝る", "空が青い", "道が長い")
# sentences that only ever follow a marker, so that a prompt made of a SENTENCES item has one continuation
LATER = ("風が強い", "花が咲く", "鳥が鳴く", "海が広い", "山が高い", "川が流れる", "星が光る", "月が出る")
# the fine-tuning flags of the README's tiny-model recipe (examples/quickstart.sh uses the same)
FINETUNE_FLAGS = ("--add_layers", "2", "--batch_size", "8", "--learning_rate", "3e-3", "--warmup_steps", "20",
                  "--max_steps", "600")
PRETRAIN_FLAGS = ("--batch_size", "4", "--learning_rate", "1e-2", "--warmup_steps", "10")
# the benchmark's bases are trained until their loss flattens (an undertrained base, loss ~1 at 200
# steps, writes its texts badly whatever the spout says); the CI test only needs a quick base
BENCH_PRETRAIN_STEPS = 600


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    markers: tuple[str, str]
    template: str            # a document; {s} a sentence, {m} the class's marker
    contexts: tuple[str, ...]   # prompts for generation; the marker is what comes next
    num_contexts: int

    def documents(self, cls: int) -> list[str]:
        return [self.template.format(s=s, m=self.markers[cls], t=LATER[(i + 3) % len(LATER)])
                for i, s in enumerate(SENTENCES)]


TASKS = (
    # the marker ends a short sentence
    Task("suffix", ("さくら", "もみじ"), "{s}、{m}。", ("今日は晴れ、", "本を読む、"), 32),
    # the marker opens the second sentence of a longer document
    Task("middle", ("ところで", "ちなみに"), "{s}。{m}、{t}。", ("今日は晴れ。", "本を読む。"), 48),
)


def write_records(task: Task, root: Path, whole_documents: bool = False) -> Path:
    """The task's two classes (a filename,fileid CSV), lm mode, one shard: ``root``/records packed, for
    pretraining a base, or ``root``/ft-records with ``--whole_documents``, the README's fine-tuning records."""
    root.mkdir(parents=True, exist_ok=True)
    for cls in range(2):
        (root / f"class{cls}.txt").write_text("\n\n".join(task.documents(cls) * 8) + "\n", encoding="utf-8")
    (root / "classes.csv").write_text("filename,fileid\nclass0.txt,0\nclass1.txt,1\n", encoding="utf-8")
    output = root / ("ft-records" if whole_documents else "records")
    subprocess.run([sys.executable, str(REPO / "encode_swe.py"), "records", "--input", str(root / "classes.csv"),
                    "--output", str(output), "--mode", "lm", "--num_context", str(task.num_contexts),
                    "--num_shards", "1", "--num_process", "1", *(["--whole_documents"] if whole_documents else [])],
                   check=True, capture_output=True)
    return output


def pretrain_base(task: Task, records: Path, root: Path, kind: str, steps: int = 200) -> Path:
    """A base pretrained on the task's texts: ``uniform`` spout, ``none`` (no spout weights at all), or
    ``release`` (uniform, then the spout MLP put back to the original's N(0, 0.01) init)."""
    import run_pretrain
    from modeling import checkpoint
    from modeling.mtf_compat import tf

    base = root / f"base-{kind}"
    (root / "params.json").write_text(json.dumps({"model_params": dict(TINY, num_contexts=task.num_contexts)}))
    spout = [] if kind == "none" else ["--spout_vector", "uniform"]
    run_pretrain.main(run_pretrain.build_parser().parse_args(
        ["--parameter_file", str(root / "params.json"), "--model_dir", str(base), "--input_files", str(records),
         "--no_progress", "--log_every", "50", "--max_steps", str(steps), *PRETRAIN_FLAGS, *spout]))
    if kind == "release":
        prefix = tf.train.latest_checkpoint(str(base))
        reader = tf.train.load_checkpoint(prefix)
        rng = np.random.default_rng(0)
        tensors = [(n, 0.01 * rng.standard_normal(s).astype(np.float32) if n.startswith("pasts/mlp")
                    else reader.get_tensor(n)) for n, s in sorted(reader.get_variable_to_shape_map().items())
                   if checkpoint.is_model_variable(n) or n == "global_step"]   # weights only, as a release
        checkpoint.write_checkpoint(prefix, tensors)
    return base


def finetune(base: Path, records: Path, output: Path, *extra: str) -> Path:
    import run_finetune

    run_finetune.main(run_finetune.build_parser().parse_args(
        ["--base_model", str(base), "--output", str(output), "--input_files", str(records), "--spout_vector", "onehot",
         "--no_progress", "--log_every", "50", *FINETUNE_FLAGS, *extra]))
    return output


def marker_rates(task: Task, model: Path, samples: int = 10) -> list[float]:
    """Per class K: the share of ``run_generate.py --spout K`` samples (``samples`` per context) that
    contain class K's marker and not the other's."""
    import run_generate

    rates = []
    for cls in range(2):
        hits = total = 0
        for i, context in enumerate(task.contexts):
            out = model / f"samples-{cls}-{i}.jsonl"
            run_generate.main(run_generate.build_parser().parse_args(
                ["--model", str(model), "--spout", str(cls), "--context", context, "--num_generate", str(samples),
                 "--max_generate", "12", "--seed", "0", "--output", str(out), "--overwrite", "--no_stream"]))
            texts = [json.loads(line)["text"] for line in open(out, encoding="utf-8")]
            hits += sum(task.markers[cls] in t and task.markers[1 - cls] not in t for t in texts)
            total += len(texts)
        rates.append(hits / total)
    return rates


def run_matrix(root: Path, tasks=TASKS, bases=("release", "uniform", "none")) -> dict[tuple[str, str], list[float]]:
    """Every task from every base: {(task, base): [rate of class 0, rate of class 1]}."""
    results = {}
    for task in tasks:
        records = write_records(task, root / task.name)
        ft_records = write_records(task, root / task.name, whole_documents=True)
        for kind in bases:
            base = pretrain_base(task, records, root / task.name, kind, BENCH_PRETRAIN_STEPS)
            model = finetune(base, ft_records, root / task.name / f"ft-{kind}")
            results[(task.name, kind)] = marker_rates(task, model)
    return results
