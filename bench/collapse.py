"""Collapse test of a teacher: several seeds of the start of the paper's schedule.

Each seed runs zskt_tf.distill for --iterations iterations of the paper's
80,000-iteration schedule (batch 128, every other setting the paper's unless --set
changes it), evaluating every 20 iterations on the embedded 2,000 CIFAR-10 test
images. A seed has collapsed when its last evaluation window's mean KL(teacher ||
student) on the generator's batches is below distill.COLLAPSED_KL (0.005; in the
paper's method, a generator loss above -0.005). Prints one table row and writes
summary.json in the output directory. Rerun the same command to resume.

Usage:
  python bench/collapse.py --teacher=embedded:cifar10-wrn-16-2 \
      --output_dir=runs/collapse/embedded [--seeds=0,1,2,3,4] [--iterations=60] \
      [--set=bn_prior=1.0 --set=adversarial_loss=l1]
"""

import dataclasses
import json
import pathlib
import time

import numpy as np
from absl import flags

from zskt_tf import cli, distill, model_io, runs

flags.DEFINE_string("teacher", None, "Teacher run directory or embedded name.")
flags.DEFINE_string("output_dir", None, "Where the seeds' runs go.")
flags.DEFINE_list("seeds", ["0", "1", "2", "3", "4"], "Seeds to run.")
flags.DEFINE_integer("iterations", 60, "Iterations per seed.")
flags.DEFINE_integer("eval_every", 20, "Iterations per evaluation window.")
flags.DEFINE_string("dataset", "embedded:cifar10-test-2k", "Evaluation set.")
flags.DEFINE_string("data_dir", None, "Local files of --dataset, if not embedded.")
flags.DEFINE_multi_string("set", [], "DistillConfig field=value overrides.")
flags.mark_flags_as_required(["teacher", "output_dir"])
FLAGS = flags.FLAGS


def overrides(pairs: list[str]) -> dict:
    """'field=value' strings -> DistillConfig fields, typed like their defaults."""
    fields = {f.name: f for f in dataclasses.fields(distill.DistillConfig)}
    values = {}
    for pair in pairs:
        name, _, text = pair.partition("=")
        if name not in fields:
            raise SystemExit(f"--set: DistillConfig has no field {name!r}")
        default = fields[name].default
        kind = type(default) if default is not None else float
        values[name] = (text.lower() in ("1", "true")) if kind is bool else kind(text)
    return values


def main(argv):
    del argv
    seeds = tuple(int(seed) for seed in FLAGS.seeds)
    config = distill.DistillConfig(
        teacher=FLAGS.teacher,
        output_dir=FLAGS.output_dir,
        dataset=FLAGS.dataset,
        data_dir=FLAGS.data_dir,
        total_iterations=FLAGS.iterations,
        schedule_iterations=80_000,
        eval_every=FLAGS.eval_every,
        **overrides(FLAGS.set),
    )
    start = time.time()
    distill.distill(config, seeds)
    last = {}
    for seed in seeds:
        results = runs.read_json(
            runs.seed_dir(FLAGS.output_dir, seed) / runs.RESULTS_FILE
        )
        last[seed] = results["history"][-1]
    collapsed = [s for s in seeds if distill.collapsed(last[s])]
    record = model_io.teacher_record(FLAGS.teacher)
    summary = {
        "teacher": FLAGS.teacher,
        "overrides": FLAGS.set,
        "iterations": FLAGS.iterations,
        "seeds": list(seeds),
        "collapsed_seeds": collapsed,
        "teacher_recorded_accuracy": record.get("recorded_accuracy"),
        "teacher_accuracy_on_eval_set": results["teacher_test_accuracy"],
        "teacher_max_prob_last_window": {
            str(s): last[s]["teacher_max_prob"] for s in seeds
        },
        "generator_kl_last_window": {str(s): last[s]["generator_kl"] for s in seeds},
        "test_accuracy_2k": {str(s): last[s]["test_accuracy"] for s in seeds},
        "wall_time_seconds_this_call": round(time.time() - start, 1),
    }
    runs.write_json(pathlib.Path(FLAGS.output_dir) / "summary.json", summary)
    max_probs = np.array(list(summary["teacher_max_prob_last_window"].values()))
    accuracy = summary["teacher_recorded_accuracy"]
    print(json.dumps(summary, indent=2))
    print(
        f"| {FLAGS.teacher} {' '.join(FLAGS.set)} | {len(collapsed)} / {len(seeds)} | "
        f"{'' if accuracy is None else f'{100 * accuracy:.2f}%'} | "
        f"{max_probs.mean():.3f} ({max_probs.min():.3f}-{max_probs.max():.3f}) |"
    )


if __name__ == "__main__":
    cli.run(main)
