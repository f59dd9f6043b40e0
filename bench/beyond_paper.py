"""Side-by-side zero-shot runs: teachers x configurations x seeds, and their table.

Every run is zskt-tf-distill on the paper's 80,000-iteration schedule stopped at
--stop_at, evaluated on the full test set every --eval_every iterations, in
<output_dir>/<teacher label>/<configuration>/seed_<s>. Runs are resumable and
extendable: rerunning with a larger --stop_at continues them. --table_only prints
the table from what exists.

Table: test accuracy at each of --report iterations (mean and range over seeds) and
the number of seeds whose game collapsed (KL(teacher || student) on the generator's
batches below 0.005 in any evaluation window after iteration 40) out of the seeds run
that far.

Usage:
  python bench/beyond_paper.py --teachers=authors=runs/authors-wrn-16-1 \
      --configs=paper,bn=--bn_prior=1 --seeds=0,1,2 --stop_at=400 \
      --data_dir=../shared/datasets/cifar10-jpeg.tar.gz --output_dir=runs/beyond
"""

import json
import pathlib
import shlex
import subprocess
import sys

import numpy as np
from absl import app, flags

flags.DEFINE_list("teachers", None, "label=teacher directory or embedded name")
flags.DEFINE_list(
    "configs",
    ["paper"],
    "label or label=flags (space-separated zskt-tf-distill flags, e.g. "
    "'bn=--bn_prior=1'); 'paper' is every default.",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer("stop_at", 400, "Iteration to run to.")
flags.DEFINE_integer("eval_every", 50, "Iterations between test evaluations.")
flags.DEFINE_list("report", ["100", "200", "400"], "Iterations shown in the table.")
flags.DEFINE_string("dataset", "cifar10", "Evaluation set.")
flags.DEFINE_string("data_dir", None, "Local files of --dataset.")
flags.DEFINE_string("output_dir", "runs/beyond", "Root of the runs.")
flags.DEFINE_boolean("table_only", False, "Only print the table.")
flags.mark_flag_as_required("teachers")
FLAGS = flags.FLAGS
COLLAPSED_KL = 0.005  # zskt_tf.distill.COLLAPSED_KL


def _pairs(values):
    return [value.partition("=")[::2] for value in values]


def run_dir(teacher_label, config_label):
    return pathlib.Path(FLAGS.output_dir) / teacher_label / config_label


def launch(teacher, teacher_label, config_label, extra, seed):
    # One seed per command, so each run has its own log and can run beside another.
    command = [
        "zskt-tf-distill",
        f"--teacher={teacher}",
        f"--dataset={FLAGS.dataset}",
        "--total_iterations=80000",
        f"--stop_at={FLAGS.stop_at}",
        f"--eval_every={FLAGS.eval_every}",
        f"--seeds={seed}",
        f"--output_dir={run_dir(teacher_label, config_label)}",
        *shlex.split(extra),
    ]
    if FLAGS.data_dir:
        command.append(f"--data_dir={FLAGS.data_dir}")
    print("$", " ".join(command), flush=True)
    # Beside the run directory, which must hold only zskt_tf's files.
    log = (
        pathlib.Path(FLAGS.output_dir)
        / teacher_label
        / f"{config_label}.seed_{seed}.log"
    )
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as file:
        # Exit 130 is a stop at --stop_at (checkpoint saved): the expected outcome.
        status = subprocess.run(command, stdout=file, stderr=file).returncode
    if status not in (0, 130):
        sys.exit(f"{' '.join(command)} failed with status {status}; see {log}")


def seed_history(teacher_label, config_label, seed):
    path = run_dir(teacher_label, config_label) / f"seed_{seed}" / "history.json"
    return json.loads(path.read_text()) if path.exists() else []


def row(teacher_label, config_label):
    cells, collapsed, judged = [], 0, 0
    for seed in FLAGS.seeds:
        history = seed_history(teacher_label, config_label, seed)
        late = [e for e in history if e["iteration"] > 40 and "generator_kl" in e]
        # A seed counts once it has an evaluation window after iteration 40.
        judged += bool(late)
        collapsed += any(e["generator_kl"] < COLLAPSED_KL for e in late)
        cells.append({e["iteration"]: e["test_accuracy"] for e in history})
    text = []
    for at in (int(r) for r in FLAGS.report):
        values = [100 * c[at] for c in cells if at in c]
        spread = f"{min(values, default=0):.2f}-{max(values, default=0):.2f}"
        text.append(
            f"{np.mean(values):.2f} ({spread}, n={len(values)})" if values else "-"
        )
    return (
        f"| {teacher_label} | {config_label} | "
        + " | ".join(text)
        + f" | {collapsed} / {judged} |"
    )


def main(argv):
    del argv
    teachers, configs = _pairs(FLAGS.teachers), _pairs(FLAGS.configs)
    if not FLAGS.table_only:
        for teacher_label, teacher in teachers:
            for config_label, extra in configs:
                for seed in FLAGS.seeds:
                    launch(teacher, teacher_label, config_label, extra, seed)
    print(
        "| teacher | configuration | "
        + " | ".join(f"acc. at {r}" for r in FLAGS.report)
        + " | collapsed |"
    )
    print("|---|---|" + "---|" * len(FLAGS.report) + "---|")
    for teacher_label, _ in teachers:
        for config_label, _ in configs:
            print(row(teacher_label, config_label))


if __name__ == "__main__":
    app.run(main)
