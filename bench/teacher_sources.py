"""Seconds per zero-shot iteration for one teacher given three ways, in this process:

- `run`: the shipped WRN-16-2 teacher as a zskt_tf run directory (embedded:);
- `keras`: the same network saved with model.save() as a .keras file (its dict
  output keeps the paper's taps, so the game is the paper's);
- `keras_logits`: the same network as a .keras file that returns only its logits
  (what most users have), its attention taps found by --attention_pairs=auto and
  read by zskt_tf.networks' layer hooks.

Each variant builds its trainer, runs --warmup iterations (tracing), then the
variants' timed iterations alternate, so that drift in the machine's speed falls on
all of them alike. Prints the median seconds per iteration and the ratio to `run`.

Usage: python -m bench.teacher_sources [--iterations=12] [--batch_size=128]
"""

import json
import pathlib
import statistics
import tempfile
import time

import keras
import tensorflow as tf
from absl import app, flags

from zskt_tf import configs, distill, model_io, zero_shot

flags.DEFINE_integer("iterations", 12, "Timed iterations per variant.")
flags.DEFINE_integer("warmup", 2, "Untimed iterations per variant (tracing).")
flags.DEFINE_integer("batch_size", 128, "Pseudo batch size.")
FLAGS = flags.FLAGS
TEACHER = "embedded:cifar10-wrn-16-2"
SCALE = "mean=0.4914,0.4822,0.4465:std=0.2023,0.1994,0.2010"  # the run's own


def trainer(teacher: str, scratch: pathlib.Path, name: str, **options):
    config = configs.DistillConfig(
        teacher=teacher,
        output_dir=str(scratch / name),
        dataset="embedded:cifar10-test-2k",
        batch_size=FLAGS.batch_size,
        **options,
    )
    return zero_shot.ZeroShotTrainer(config, distill.check_inputs(config))


def main(argv):
    del argv
    scratch = pathlib.Path(tempfile.mkdtemp(prefix="teacher_sources_"))
    model = model_io.load_teacher(TEACHER)
    model.save(scratch / "teacher.keras")
    logits_only = keras.Model(model.input, model.output["logits"])
    logits_only.save(scratch / "teacher_logits.keras")
    trainers = {
        "run": trainer(TEACHER, scratch, "run"),
        "keras": trainer(
            str(scratch / "teacher.keras"), scratch, "keras", input_scale=SCALE
        ),
        "keras_logits": trainer(
            str(scratch / "teacher_logits.keras"),
            scratch,
            "keras_logits",
            input_scale=SCALE,
            attention_pairs="auto",
        ),
    }
    z = tf.random.normal((FLAGS.batch_size, 100))
    times = {name: [] for name in trainers}
    for step in range(FLAGS.warmup + FLAGS.iterations):
        for name, run in trainers.items():
            started = time.perf_counter()
            values = run.train_step(z, step)
            float(values["train/student_loss"])  # wait for the result
            if step >= FLAGS.warmup:
                times[name].append(time.perf_counter() - started)
    base = statistics.median(times["run"])
    report = {
        name: {
            "seconds_per_iteration": round(statistics.median(values), 4),
            "ratio_to_run_directory": round(statistics.median(values) / base, 4),
        }
        for name, values in times.items()
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    app.run(main)
