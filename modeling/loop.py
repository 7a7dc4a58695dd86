"""The training loop's life under cron: one trainer per directory, resume, save on SIGTERM, keep K.

``train`` is shared by run_pretrain.py and run_finetune.py. A model directory holds the
checkpoints (``model.ckpt-<step>``), ``parameters.json``, ``trainer.lock`` while a trainer runs,
``train_log.jsonl`` (rewritten at each save, so it always matches the checkpoints) and TensorBoard
event files (``train/``). Paths go through tf.io.gfile, so ``gs://`` directories work.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import sys
import time

import numpy as np
from google.protobuf import message

from modeling.cli import UserError
from modeling import checkpoint
from modeling.files import atomic_output
from modeling.mtf_compat import tf
from modeling.records import SUMMARY_FILE
from modeling.runtime import latest_checkpoint
from modeling.training import TrainGraph

LOCK_FILE, LOG_FILE, CHECKPOINT_PREFIX = "trainer.lock", "train_log.jsonl", "model.ckpt"


class Lock:
    """``trainer.lock`` in the model directory: who trains here. A lock whose process is gone (same
    host) or that was not refreshed for ``stale_after`` seconds (another host) is taken over."""

    def __init__(self, directory: str, stale_after: float = 3600.0):
        self.path = os.path.join(directory, LOCK_FILE)
        self.stale_after = stale_after
        self.owner = {"host": socket.gethostname(), "pid": os.getpid()}

    def _holder(self) -> dict | None:
        try:
            with tf.io.gfile.GFile(self.path, "r") as f:
                return json.loads(f.read())
        except (tf.errors.NotFoundError, json.JSONDecodeError):
            return None

    def _alive(self, holder: dict) -> bool:
        if holder.get("host") == self.owner["host"]:
            try:
                os.kill(int(holder["pid"]), 0)
                return True
            except (ProcessLookupError, ValueError, KeyError):
                return False
            except PermissionError:
                return True
        return time.time() - float(holder.get("time", 0)) < self.stale_after

    def acquire(self) -> None:
        holder = self._holder()
        if holder and holder != self.owner and self._alive(holder):
            raise UserError(f"another trainer (pid {holder.get('pid')} on {holder.get('host')}) is using "
                            f"{os.path.dirname(self.path)}; this one exits (remove {self.path} if that "
                            f"trainer is gone)")
        self.refresh()

    def refresh(self) -> None:
        with atomic_output(self.path) as f:
            f.write(json.dumps({**self.owner, "time": time.time()}))

    def release(self) -> None:
        if self._holder() == self.owner or (self._holder() or {}).get("pid") == self.owner["pid"]:
            tf.io.gfile.remove(self.path)


def checkpoint_step(directory: str) -> int:
    """The global step of the latest checkpoint in ``directory`` (0 if none)."""
    prefix = latest_checkpoint(directory)
    return int(tf.train.load_variable(prefix, "global_step")) if prefix else 0


class StopRequested:
    """Turns SIGTERM/SIGINT into a flag checked between steps (preemptible TPU VMs send SIGTERM)."""

    def __init__(self):
        self.signal: int | None = None
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, number, _frame):
        self.signal = number

    def restore(self) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    max_steps: int
    save_every: int
    keep_checkpoints: int
    eval_every: int = 0
    log_every: int = 10


class Log:
    """The JSONL log kept in memory since the last save and rewritten atomically with each checkpoint."""

    def __init__(self, directory: str, step: int):
        self.path = os.path.join(directory, LOG_FILE)
        self.lines: list[str] = []
        if tf.io.gfile.exists(self.path):
            with tf.io.gfile.GFile(self.path, "r") as f:   # keep only what the checkpoint covers
                self.lines = [line for line in f.read().splitlines() if json.loads(line).get("step", 0) <= step]

    def add(self, record: dict) -> None:
        self.lines.append(json.dumps(record))

    def flush(self) -> None:
        with atomic_output(self.path) as f:
            f.write("".join(line + "\n" for line in self.lines))


def _is_training_checkpoint(prefix: str, g: TrainGraph) -> bool:
    """Whether ``prefix`` holds everything the saver restores (slots and input position included)."""
    names = set(dict(tf.train.list_variables(prefix)))
    return all(v.op.name in names for v in tf.global_variables()) and any(n.endswith("_STATE") for n in names)


def _warm_start(session: tf.Session, prefix: str) -> None:
    """Load the variables ``prefix`` has (same names and shapes) and initialise only the others, so that
    the weights are never held twice (initial and loaded values) while a large model loads."""
    found = dict(tf.train.list_variables(prefix))
    present = {v.op.name: v for v in tf.global_variables()
               if v.op.name in found and list(found[v.op.name]) == v.shape.as_list()}
    session.run(tf.variables_initializer([v for v in tf.global_variables() if v.op.name not in present]))
    tf.train.Saver(present).restore(session, prefix)


def _checkpoints(directory: str) -> list[str]:
    """Checkpoint prefixes in ``directory``, oldest first."""
    prefixes = [name[:-len(".index")] for name in tf.io.gfile.glob(os.path.join(directory, CHECKPOINT_PREFIX + "-*.index"))]
    return sorted(prefixes, key=lambda p: int(p.rsplit("-", 1)[1]))


def _save(session, g: TrainGraph, directory: str, step: int, keep: int, log: Log, lock: Lock) -> None:
    """Rewrite the log, then fold slices into masters and write the checkpoint (TF names it 'latest'
    only once it is complete), and drop the oldest beyond ``keep``. The log goes first: a kill between
    the two leaves log lines past the latest checkpoint, which the next run drops (``Log``), never a
    checkpoint whose last lines are missing from the log."""
    log.flush()
    checkpoint.save(session, g.saver, os.path.join(directory, CHECKPOINT_PREFIX), g.copy_slices_to_masters, step)
    prefixes = _checkpoints(directory)
    checkpoint.write_checkpoint_state(directory, [os.path.basename(p) for p in prefixes[-keep:]])
    for old in prefixes[:-keep]:
        for name in tf.io.gfile.glob(old + ".*"):
            tf.io.gfile.remove(name)
    lock.refresh()


class Summaries:
    """TensorBoard scalars in ``<model_dir>/train`` (event files written by TF itself; no tensorboard package)."""

    def __init__(self, directory: str):
        self.writer = tf.summary.FileWriter(os.path.join(directory, "train"))

    def add(self, step: int, scalars: dict[str, float]) -> None:
        values = [tf.Summary.Value(tag=tag, simple_value=value) for tag, value in scalars.items()]
        self.writer.add_summary(tf.Summary(value=values), step)

    def close(self) -> None:
        self.writer.close()


def _record(step: int, metrics: dict, tokens_per_second: float) -> tuple[dict, dict[str, float]]:
    """One JSONL log record and its TensorBoard scalars."""
    record = {"step": step, "tokens_per_second": tokens_per_second}
    for name in ("loss", "lm_loss", "aux_loss", "learning_rate", "grad_norm", "loss_scale", "spout_separation"):
        if name in metrics and np.isfinite(metrics[name]):
            record[name] = float(metrics[name])
    record["perplexity"] = float(np.exp(min(record["lm_loss"], 50.0)))
    record["dropped_fraction"] = [round(float(x), 5) for x in metrics["dropped_fraction"]]
    record["expert_fraction"] = [[round(float(x), 5) for x in layer] for layer in metrics["expert_fraction"]]
    scalars = {f"train/{k}": v for k, v in record.items() if isinstance(v, float)}
    for layer, (dropped, fractions) in enumerate(zip(record["dropped_fraction"], record["expert_fraction"])):
        scalars[f"experts/layer{layer}/dropped"] = dropped
        scalars.update({f"experts/layer{layer}/expert{e}": share for e, share in enumerate(fractions)})
    return record, scalars


SPOUT_COLLAPSED = 0.01   # spout_separation below which the classes reach the model as one spout


def _warn_spout_collapse(record: dict) -> bool:
    """Say (once) when the classes' spout keys/values have become the same: class control is lost."""
    if record.get("spout_separation", 1.0) >= SPOUT_COLLAPSED:
        return False
    print(f"warning: at step {record['step']} the spout gives every class almost the same keys and values "
          f"(spout_separation {record['spout_separation']:.2g}): the model cannot tell the classes apart; "
          "lower --learning_rate, or fine-tune from a fresh spout (see README, Fine-tuning)", file=sys.stderr, flush=True)
    return True


def train(directory: str, g: TrainGraph, session_config: tf.ConfigProto, master: str, loop: LoopSettings,
          evaluate=None, progress: bool = True) -> int:
    """Train in ``directory`` until ``loop.max_steps`` or a stop signal; returns the final step.

    ``evaluate(session, step)`` (optional) returns held-out metrics to log every ``eval_every`` steps.
    """
    from tqdm import tqdm  # noqa: PLC0415

    lock = Lock(directory)
    lock.acquire()
    stop = StopRequested()
    try:
        with g.graph.as_default(), tf.Session(master, config=session_config) as session:
            prefix = latest_checkpoint(directory)
            if prefix and _is_training_checkpoint(prefix, g):
                g.saver.restore(session, prefix)
            elif prefix:   # weights only (a release or a new fine-tuning directory): slots start at zero
                _warm_start(session, prefix)
            else:
                session.run(g.init_op)
            session.run(g.copy_masters_to_slices)
            step = int(session.run(g.global_step))
            log = Log(directory, step)
            summaries = Summaries(directory)
            bar = tqdm(total=loop.max_steps, initial=step, unit="step", disable=not progress, dynamic_ncols=True)
            last_saved, started, steps_timed, collapsed = step, time.perf_counter(), 0, False
            while step < loop.max_steps and stop.signal is None:
                try:
                    _, metrics = session.run([g.train_op, g.metrics])
                except tf.errors.DataLossError as error:
                    raise UserError(f"a training record is corrupt ({error.message.splitlines()[0]}): rebuild the "
                                    f"records; the last checkpoint (step {last_saved}) is kept") from None
                step += 1
                steps_timed += 1
                if not np.isfinite(metrics["loss"]) and "loss_scale" not in metrics:
                    raise UserError(f"the loss became {metrics['loss']} at step {step}; training stopped and the "
                                    f"last good checkpoint (step {last_saved}) was kept: lower --learning_rate "
                                    f"or raise --warmup_steps")
                if step % loop.log_every == 0 or step == loop.max_steps:
                    rate = steps_timed * g.tokens_per_step / (time.perf_counter() - started)
                    record, scalars = _record(step, metrics, rate)
                    log.add(record)
                    summaries.add(step, scalars)
                    bar.set_postfix(loss=f"{record['lm_loss']:.3f}", tok_s=f"{rate:,.0f}")
                    collapsed = collapsed or _warn_spout_collapse(record)
                    started, steps_timed = time.perf_counter(), 0
                if evaluate and loop.eval_every and step % loop.eval_every == 0:
                    held_out = evaluate(session, step)
                    log.add({"step": step, **{f"eval_{name}": value for name, value in held_out.items()}})
                    summaries.add(step, {f"eval/{name}": value for name, value in held_out.items()})
                bar.update(1)
                if step % loop.save_every == 0:
                    _save(session, g, directory, step, loop.keep_checkpoints, log, lock)
                    last_saved = step
            if step != last_saved or not prefix and step == 0:
                _save(session, g, directory, step, loop.keep_checkpoints, log, lock)
            bar.close()
            summaries.close()
            if stop.signal is not None:
                print(f"stopped by signal {stop.signal} at step {step}; checkpoint saved", flush=True)
            return step
    finally:
        stop.restore()
        lock.release()


def expand_files(patterns: list[str], flag: str) -> list[str]:
    """Files matching ``patterns`` (local or gs:// globs, or records directories: the shards their
    records.json lists), in a stable order; errors name the pattern."""
    files = []
    for pattern in patterns:
        matched = records_dir_shards(pattern, flag) if tf.io.gfile.isdir(pattern) else sorted(tf.io.gfile.glob(pattern))
        if not matched:
            raise UserError(f"{flag} {pattern} matches no file")
        for name in matched:
            if tf.io.gfile.stat(name).length == 0:
                raise UserError(f"{flag}: {name} is empty; remove it or rebuild the records")
        files += matched
    return files


def records_dir_shards(directory: str, flag: str) -> list[str]:
    """The shards of a records directory made by 'encode_swe.py records', as its records.json lists them."""
    summary = os.path.join(directory, SUMMARY_FILE)
    if not tf.io.gfile.exists(summary):
        raise UserError(f"{flag} {directory} is a directory without {SUMMARY_FILE}: pass a records directory "
                        f"made by 'encode_swe.py records', or a glob such as '{directory}/*.tfrecord'")
    try:
        with tf.io.gfile.GFile(summary, "r") as f:
            shards = [os.path.join(directory, shard["file"]) for shard in json.load(f)["shards"]]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{flag}: {summary} is not a records summary (no 'shards' list); rebuild the records") from None
    missing = [name for name in shards if not tf.io.gfile.exists(name)]
    if missing:
        raise UserError(f"{flag}: {missing[0]}, listed in {summary}, is missing; rebuild the records")
    return shards


def check_record_length(files: list[str], num_contexts: int, flag: str) -> None:
    """The records' length: the same in every file, at most the model's num_contexts."""
    from modeling.training import record_length  # noqa: PLC0415

    lengths = {}
    for name in files:
        try:
            lengths[name] = record_length(name)
        except (tf.errors.OpError, message.DecodeError):
            raise UserError(f"{flag}: {name} is not a file of training records (or is corrupt): pass the records "
                            f"directory or a '*.tfrecord' glob, or rebuild it with 'encode_swe.py records'") from None
    for name, length in lengths.items():
        if not length:
            raise UserError(f"{flag}: {name} holds no records; remove it or rebuild the records")
        if length != lengths[files[0]]:
            raise UserError(f"{flag}: records in {name} have {length} tokens but those in {files[0]} have "
                            f"{lengths[files[0]]}; train on records of one --num_context")
        if length > num_contexts:
            raise UserError(f"{flag}: records in {name} have {length} tokens but the model has num_contexts "
                            f"{num_contexts}: rebuild them with --num_context {num_contexts} or less")


def check_class_ids(files: list[str], spout_vector: str, num_spout: int) -> None:
    """One-hot spouts need class ids that fit: ``onehot`` takes i < S, ``half_onehot`` i < S/2 (the
    original wrapped them silently with i mod S). Read from records.json, else from the records."""
    classes = num_spout // 2 if spout_vector == "half_onehot" else num_spout
    for folder in sorted({os.path.dirname(name) for name in files}):
        summary_path, summary = os.path.join(folder, SUMMARY_FILE), {}
        if tf.io.gfile.exists(summary_path):
            with tf.io.gfile.GFile(summary_path, "r") as f:
                summary = json.load(f)
        if summary.get("class_ids", "csv") != "csv":
            raise UserError(f"--spout_vector {spout_vector}: the records in {folder} carry running record "
                            "numbers, not class ids; build them from a 'filename,fileid' CSV")
        largest = summary.get("max_class_id")
        if largest is None:   # records of the original tools, or of an older version of ours
            ids = tf.data.TFRecordDataset([n for n in files if os.path.dirname(n) == folder]).map(
                lambda raw: tf.io.parse_single_example(raw, {"i": tf.io.FixedLenFeature([1], tf.int64)})["i"][0])
            largest = int(ids.reduce(tf.constant(-1, tf.int64), tf.maximum))
        if largest >= classes:
            raise UserError(f"--spout_vector {spout_vector}: the records in {folder} have class id {largest}, but "
                            f"num_spout {num_spout} allows ids 0..{classes - 1}; renumber the classes in the CSV")


def run_from_args(args, directory: str, parameters, prepare=None) -> int:
    """Check the shared training flags against ``parameters``, build the training graph and train in
    ``directory``. ``prepare``, if given, runs once the flags are checked (fine-tuning creates its
    directory there) and returns the parameters and frozen variable names to train with."""
    from modeling.mesh import MeshError, make_mesh  # noqa: PLC0415
    from modeling.training import Settings, build, build_evaluation  # noqa: PLC0415

    config, train_params = parameters.model, parameters.train_params

    def pick(flag_value, key: str, default):
        return flag_value if flag_value is not None else train_params.get(key, default)

    done = checkpoint_step(directory)
    if done >= args.max_steps:
        print(f"{directory} is already at step {done} >= --max_steps {args.max_steps}; nothing to do")
        return done
    if not args.input_files:
        raise UserError("--input_files is required to train")
    files = expand_files(args.input_files, "--input_files")
    check_record_length(files, config.num_contexts, "--input_files")
    eval_files = expand_files(args.eval_files, "--eval_files") if args.eval_files else []
    if eval_files:
        check_record_length(eval_files, config.num_contexts, "--eval_files")
    precision = "bfloat16" if args.use_bfloat16 else "float16" if args.use_mixed_precision else "float32"
    if args.optimizer == "adafactor" and precision != "float32":
        raise UserError("--optimizer adafactor needs float32 activations: Mesh TensorFlow's Adafactor updates "
                        "the weights from their rounded low-precision copy; use Adam with --use_bfloat16")
    if args.spout_vector != "none" and not config.num_spout:
        raise UserError("--spout_vector needs a model with a spout (num_spout > 0 in parameters.json)")
    if args.spout_vector in ("onehot", "half_onehot"):
        check_class_ids(files, args.spout_vector, config.num_spout)
    try:
        mesh = make_mesh(args.mesh_shape, args.layout, args.tpu)
    except MeshError as error:
        raise UserError(str(error)) from None
    settings = Settings(
        input_files=files, batch_size=pick(args.batch_size, "batch_size", 16), max_steps=args.max_steps,
        learning_rate=pick(args.learning_rate, "base_lr", 1e-4), warmup_steps=pick(args.warmup_steps,
                                                                                    "num_warmup_steps", 1000),
        decay=args.decay, final_learning_rate=args.final_learning_rate, optimizer=args.optimizer,
        weight_decay=args.weight_decay, clip_gradients=args.clip_gradients, spout_vector=args.spout_vector,
        precision=precision, seed=args.seed)
    loop = LoopSettings(max_steps=args.max_steps, save_every=pick(args.save_every, "checkpoint_per_steps", 1000),
                        keep_checkpoints=pick(args.keep_checkpoints, "max_to_keep_save", 5),
                        eval_every=args.eval_every if args.eval_files else 0, log_every=args.log_every)
    for name in ("batch_size", "save_every", "keep_checkpoints", "log_every"):
        value = settings.batch_size if name == "batch_size" else getattr(loop, name)
        if value < 1:
            raise UserError(f"--{name} must be at least 1, got {value}")
    if settings.batch_size % mesh.batch_split:
        raise UserError(f"--batch_size {settings.batch_size} is not a multiple of the mesh's batch axis "
                        f"({mesh.batch_split})")
    if prepare is not None:
        parameters, frozen = prepare()
        config, settings = parameters.model, dataclasses.replace(settings, frozen=frozen)
    graph = build(config, settings, mesh)
    evaluate = None
    if eval_files:
        evaluation = build_evaluation(config, settings, mesh, graph, eval_files, args.eval_batches)
        evaluate = lambda session, step: evaluation.run(session)  # noqa: E731
    return train(directory, graph, mesh.session_config, mesh.master, loop, evaluate, progress=not args.no_progress)
