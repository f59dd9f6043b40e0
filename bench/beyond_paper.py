"""Side-by-side zero-shot runs: teachers x configurations x seeds, and their table.

Every run is zskt-tf-distill on the paper's 80,000-iteration schedule stopped at
--stop_at, evaluated on the full test set every --eval_every iterations, in
<output_dir>/<teacher label>/<configuration>/seed_<s>. Runs are resumable and
extendable: rerunning with a larger --stop_at continues them. --table_only prints
the table from what exists.

--plot draws the curves behind the table (seed mean and min-max band, one panel per
teacher) to a PNG.

Table: test accuracy at each of --report iterations and averaged over the --smooth
evaluations (mean and range over seeds), and the number of seeds whose game
collapsed (KL(teacher || student) on the generator's batches below 0.005 in any
evaluation window after iteration 40) out of the seeds run that far.

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

from zskt_tf import runs

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
flags.DEFINE_list(
    "smooth",
    ["300", "350", "400"],
    "Evaluations averaged per seed in the last column (single evaluations swing).",
)
flags.DEFINE_string("dataset", "cifar10", "Evaluation set.")
flags.DEFINE_string("data_dir", None, "Local files of --dataset.")
flags.DEFINE_string("output_dir", "runs/beyond", "Root of the runs.")
flags.DEFINE_boolean("table_only", False, "Only print the table.")
flags.DEFINE_string(
    "plot", None, "Also draw the accuracy curves (seed mean, min-max band) to this PNG."
)
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
    path = runs.seed_dir(run_dir(teacher_label, config_label), seed) / "history.json"
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
    smooth = [int(at) for at in FLAGS.smooth]
    columns = [[100 * c[int(at)] for c in cells if int(at) in c] for at in FLAGS.report]
    columns.append(
        [
            100 * np.mean([c[at] for at in smooth])
            for c in cells
            if set(smooth) <= set(c)
        ]
    )
    text = [
        f"{np.mean(v):.2f} ({min(v):.2f}-{max(v):.2f}, n={len(v)})" if v else "-"
        for v in columns
    ]
    return (
        f"| {teacher_label} | {config_label} | "
        + " | ".join(text)
        + f" | {collapsed} / {judged} |"
    )


def plot(teachers, configs, path):
    """One panel per teacher: test accuracy against iteration for each configuration,
    the mean over the seeds that reached each evaluation and their min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(
        1, len(teachers), figsize=(5.5 * len(teachers), 4), squeeze=False
    )
    for axis, (teacher_label, _) in zip(axes[0], teachers, strict=True):
        for index, (config_label, _) in enumerate(configs):
            by_step = {}
            for seed in FLAGS.seeds:
                for entry in seed_history(teacher_label, config_label, seed):
                    by_step.setdefault(entry["iteration"], []).append(
                        100 * entry["test_accuracy"]
                    )
            if not by_step:
                continue
            steps = sorted(by_step)
            values = [by_step[step] for step in steps]
            seeds = max(len(v) for v in values)
            color = f"C{index}"  # one colour per configuration in every panel
            axis.plot(
                steps,
                [np.mean(v) for v in values],
                "o-",
                color=color,
                markersize=3,
                label=f"{config_label} ({seeds} seed{'s' if seeds > 1 else ''})",
            )
            axis.fill_between(
                steps,
                [min(v) for v in values],
                [max(v) for v in values],
                color=color,
                alpha=0.15,
            )
        axis.set(xlabel="iteration", ylabel="test accuracy (%)", title=teacher_label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


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
        + f" | mean of {'/'.join(FLAGS.smooth)} | collapsed |"
    )
    print("|---|---|" + "---|" * (len(FLAGS.report) + 1) + "---|")
    for teacher_label, _ in teachers:
        for config_label, _ in configs:
            print(row(teacher_label, config_label))
    if FLAGS.plot:
        plot(teachers, configs, FLAGS.plot)
        print(f"curves: {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
