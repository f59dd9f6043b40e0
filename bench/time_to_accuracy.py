"""Time to accuracy: zero-shot configurations side by side for a wall-clock budget.

Every run is one zskt-tf-distill command (one seed, one thread), --parallel of them
at a time, so configurations share the machine alike; <output_dir>/<teacher>/<config>
/seed_<s> holds each run, resumable: rerunning the same command continues the runs
and skips the finished ones. The paper's method run for --budget_iterations
iterations (configuration `paper80k`: the 80,000-iteration schedule stopped there)
sets the budget: the median over its seeds of its time in training steps. Each
run's accuracy at the budget is its last evaluation within it. Accuracy is also
drawn against the generator images made and the student sample-steps taken, which
carry over to other hardware.

Configurations are label=flags; the flags are zskt-tf-distill's, and a
`{budget}` in them is replaced by --budget_iterations (e.g. a complete schedule:
'paper1000=--total_iterations={budget}').

Usage:
  python bench/time_to_accuracy.py --teachers=TN=embedded:cifar10-wrn-16-2 \
      --configs='paper80k,paperN=--total_iterations={budget},budget=--preset=budget' \
      --seeds=0,1,2 --data_dir=../shared/datasets/cifar10-jpeg.tar.gz \
      --output_dir=runs/tta --plot=docs/images/time-to-accuracy.png
"""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import time

import numpy as np
from absl import app, flags

from zskt_tf import runs

flags.DEFINE_list("teachers", None, "label=teacher (run directory, embedded:, .keras)")
flags.DEFINE_list(
    "configs",
    ["paper80k"],
    "label or label=flags; 'paper80k' is the paper's settings, stopped at the budget.",
)
flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
flags.DEFINE_integer(
    "budget_iterations", 1000, "The budget: this many iterations of the paper's."
)
flags.DEFINE_integer("eval_every", 100, "Iterations between test evaluations.")
flags.DEFINE_integer("parallel", 2, "Runs side by side (one thread each).")
flags.DEFINE_string("dataset", "cifar10", "Evaluation set.")
flags.DEFINE_string("data_dir", None, "Local files of --dataset.")
flags.DEFINE_string("output_dir", "runs/tta", "Root of the runs.")
flags.DEFINE_boolean("table_only", False, "Only print the table (and plot).")
flags.DEFINE_string("plot", None, "Draw accuracy against time, images and steps here.")
flags.DEFINE_boolean(
    "plot_time",
    True,
    "Draw the first panel against time in training steps; false: against iterations "
    "(for runs that did not share the machine alike).",
)
flags.mark_flag_as_required("teachers")
FLAGS = flags.FLAGS
PAPER = "paper80k"


def _pairs(values):
    return [value.partition("=")[::2] for value in values]


def run_dir(teacher_label, config_label, seed) -> pathlib.Path:
    configuration = pathlib.Path(FLAGS.output_dir) / teacher_label / config_label
    return runs.seed_dir(configuration, seed)


def config_flags(config_label: str, extra: str) -> list[str]:
    """The zskt-tf-distill flags of a configuration, {budget} filled in."""
    budget = FLAGS.budget_iterations
    if config_label == PAPER:
        return ["--total_iterations=80000", f"--stop_at={budget}"]
    return shlex.split(extra.replace("{budget}", str(budget)))


def command(teacher, config_label, extra, seed, output) -> list[str]:
    """The zskt-tf-distill command of one run; output is <teacher>/<config>."""
    return [
        sys.executable,
        str(pathlib.Path(__file__).resolve().parents[1] / "bin" / "zskt-tf-distill"),
        f"--teacher={teacher}",
        f"--dataset={FLAGS.dataset}",
        *([f"--data_dir={FLAGS.data_dir}"] if FLAGS.data_dir else []),
        f"--eval_every={FLAGS.eval_every}",
        f"--seeds={seed}",
        f"--output_dir={output}",
        *config_flags(config_label, extra),
    ]


def stop_of(config_label: str, extra: str) -> int | None:
    """The --stop_at of a configuration's runs (--stop_at=N or --stop_at N; the
    last one given, as absl reads them), or None."""
    words, stop = config_flags(config_label, extra), None
    for index, word in enumerate(words):
        if word.startswith("--stop_at="):
            stop = word.partition("=")[2]
        elif word == "--stop_at" and index + 1 < len(words):
            stop = words[index + 1]
    if stop is None:
        return None
    try:
        return int(stop)
    except ValueError:
        raise SystemExit(
            f"error: configuration {config_label!r} has --stop_at={stop}; give a "
            "whole number of iterations"
        ) from None


def finished(directory: pathlib.Path, config_label: str, extra: str) -> bool:
    """A run is finished when its schedule completed (results.json) or it reached
    its --stop_at."""
    if (directory / "results.json").is_file():
        return True
    history = directory / "history.json"
    stop = stop_of(config_label, extra)
    if stop is not None and history.is_file():
        entries = json.loads(history.read_text())
        return entries[-1]["iteration"] >= stop
    return False


def launch_all(teachers, configs) -> None:
    """Runs every (teacher, configuration, seed) not finished, FLAGS.parallel at a
    time, seeds outermost so that configurations of one seed run side by side."""
    queue = [
        (teacher_label, teacher, config_label, extra, seed)
        for seed in FLAGS.seeds
        for teacher_label, teacher in teachers
        for config_label, extra in configs
        if not finished(run_dir(teacher_label, config_label, seed), config_label, extra)
    ]
    running = []
    env = dict(os.environ, TF_NUM_INTRAOP_THREADS="1", TF_CPP_MIN_LOG_LEVEL="2")
    while queue or running:
        while queue and len(running) < FLAGS.parallel:
            teacher_label, teacher, config_label, extra, seed = queue.pop(0)
            output = run_dir(teacher_label, config_label, seed).parent
            args = command(teacher, config_label, extra, seed, output)
            output.parent.mkdir(parents=True, exist_ok=True)
            log = output.parent / f"{config_label}.seed_{seed}.log"
            print("$", shlex.join(args[1:]), flush=True)
            handle = open(log, "a")
            process = subprocess.Popen(args, stdout=handle, stderr=handle, env=env)
            running.append((process, handle, log))
        time.sleep(5)
        for entry in list(running):
            process, handle, log = entry
            if process.poll() is None:
                continue
            handle.close()
            running.remove(entry)
            # 130: stopped at --stop_at (paper80k, or a config's own), checkpoint saved.
            if process.returncode not in (0, 130):
                print(f"failed with status {process.returncode}; see {log}")


def series(teacher_label, config_label, seed) -> list[dict]:
    """Evaluations of one run with their time, images and sample-steps."""
    directory = run_dir(teacher_label, config_label, seed)
    paths = [directory / name for name in ("history.json", "timeline.json")]
    if not all(p.is_file() for p in paths):
        return []
    history, timeline = (json.loads(p.read_text()) for p in paths)
    config = json.loads((directory / "config.json").read_text())
    batch = config["batch_size"]
    steps = config["student_steps"] + (config.get("replay_steps") or 0)
    seconds = {t["iteration"]: t["train_seconds"] for t in timeline}
    return [
        {
            "iteration": entry["iteration"],
            "accuracy": 100 * entry["test_accuracy"],
            "seconds": seconds.get(entry["iteration"], float("nan")),
            "images": batch * entry["iteration"],
            "sample_steps": batch * steps * entry["iteration"],
        }
        for entry in history
    ]


def budget_seconds(teacher_label) -> float | None:
    """The median time of the paper's budget_iterations over its seeds."""
    times = [
        point["seconds"]
        for seed in FLAGS.seeds
        for point in series(teacher_label, PAPER, seed)
        if point["iteration"] == FLAGS.budget_iterations
    ]
    return float(np.median(times)) if times else None


def _cell(values) -> str:
    if not values:
        return "-"
    return (
        f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})"
    )


def table(teachers, configs) -> None:
    print(
        "| teacher | configuration | acc. at the budget | at the end | iterations "
        "| time in steps, min | generator images | student sample-steps |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for teacher_label, _ in teachers:
        budget = budget_seconds(teacher_label)
        for config_label, _ in configs:
            at_budget, final, iterations, minutes, images, steps = (
                [] for _ in "123456"
            )
            for seed in FLAGS.seeds:
                points = series(teacher_label, config_label, seed)
                if not points:
                    continue
                within = [p for p in points if budget and p["seconds"] <= budget]
                if within:
                    at_budget.append(within[-1]["accuracy"])
                last = points[-1]
                final.append(last["accuracy"])
                iterations.append(last["iteration"])
                minutes.append(last["seconds"] / 60)
                images.append(last["images"])
                steps.append(last["sample_steps"])
            print(
                f"| {teacher_label} | {config_label} | {_cell(at_budget)} | "
                f"{_cell(final)} | {int(np.mean(iterations)) if iterations else '-'} | "
                f"{_cell(minutes)} | {int(np.mean(images)) if images else '-'} | "
                f"{int(np.mean(steps)) if steps else '-'} |"
            )
        if budget:
            print(
                f"\nbudget for {teacher_label}: {budget / 60:.1f} min in training "
                f"steps ({FLAGS.budget_iterations} iterations of the paper's, median "
                "over its seeds)\n"
            )


def plot(teachers, configs, path) -> None:
    """One row per teacher: accuracy against time, generator images and student
    sample-steps; seed mean and min-max band per configuration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = ("seconds", "minutes in training steps", 1 / 60)
    if not FLAGS.plot_time:
        first = ("iteration", "iterations", 1)
    axes_of = (
        first,
        ("images", "generator images (thousands)", 1e-3),
        ("sample_steps", "student sample-steps (millions)", 1e-6),
    )
    figure, axes = plt.subplots(
        len(teachers), 3, figsize=(15, 4 * len(teachers)), squeeze=False
    )
    for row, (teacher_label, _) in zip(axes, teachers, strict=True):
        budget = budget_seconds(teacher_label)
        for index, (config_label, _) in enumerate(configs):
            runs = [series(teacher_label, config_label, s) for s in FLAGS.seeds]
            runs = [r for r in runs if r]
            if not runs:
                continue
            length = min(len(r) for r in runs)
            accuracy = np.array([[p["accuracy"] for p in r[:length]] for r in runs])
            for axis, (key, label, scale) in zip(row, axes_of, strict=True):
                x = np.mean([[p[key] * scale for p in r[:length]] for r in runs], 0)
                axis.plot(
                    x,
                    accuracy.mean(0),
                    "o-",
                    color=f"C{index}",
                    markersize=3,
                    label=f"{config_label} ({len(runs)} seed{'s' * (len(runs) > 1)})",
                )
                axis.fill_between(
                    x, accuracy.min(0), accuracy.max(0), color=f"C{index}", alpha=0.15
                )
                axis.set(xlabel=label, ylabel="test accuracy (%)", title=teacher_label)
                axis.grid(alpha=0.3)
        if budget and FLAGS.plot_time:
            row[0].axvline(budget / 60, color="gray", linestyle="--", label="budget")
        for axis in row:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def main(argv):
    del argv
    teachers, configs = _pairs(FLAGS.teachers), _pairs(FLAGS.configs)
    if not FLAGS.table_only:
        launch_all(teachers, configs)
    table(teachers, configs)
    if FLAGS.plot:
        plot(teachers, configs, FLAGS.plot)
        print(f"curves: {FLAGS.plot}")


if __name__ == "__main__":
    app.run(main)
