"""Two settings compared seed by seed: is B's gain over A beyond the seed spread?

Adversarial training is noisy (one seed moves several points between machines), so
a claim that a setting helps rests on pairs: the same seed under A and under B, run
side by side. This reads the zskt-tf-distill runs of each setting (one or more run
directories, each holding seed_<s>/ subdirectories; a seed may appear in only one of
a setting's directories), pairs the seeds both settings have, and prints a Markdown
table: each seed's test accuracy under A and B and the change, each setting's mean
and range, and the paired mean change with its standard error, Student's t and its
two-sided p, and the exact two-sided p of Wilcoxon's signed-rank test.

By default a seed's figure is the end of its run (seeds whose run has not finished
are left out, and named); --at=N takes the evaluation at iteration N instead.

Usage:
  python bench/paired_seeds.py --a=runs/fx5/r10_n500_tv0.3 \
      --b=runs/fx5/r10_n500_tv0.3_glr1e-4 [--at=400] [--metric=test_accuracy]
"""

import json
import math
import pathlib

import numpy as np
from absl import app, flags

flags.DEFINE_list("a", None, "Run directories of setting A (the baseline).")
flags.DEFINE_list("b", None, "Run directories of setting B.")
flags.DEFINE_integer("at", None, "Compare at this iteration (default: the run's end).")
flags.DEFINE_string("metric", "test_accuracy", "History field to compare.")
flags.mark_flags_as_required(["a", "b"])
FLAGS = flags.FLAGS


class Missing(Exception):
    pass


def seed_figures(directories, metric: str, at: int | None) -> tuple[dict, list]:
    """{seed: figure} over the seed_<s> runs of the directories, and the seeds
    left out (not finished, or not evaluated at `at`)."""
    figures, left_out = {}, []
    for directory in map(pathlib.Path, directories):
        runs = sorted(directory.glob("seed_*"))
        if not runs:
            raise Missing(f"{directory} has no seed_<s> run directories")
        for run in runs:
            seed = run.name.removeprefix("seed_")
            if not seed.isdigit():
                continue  # not a seed's run (seed_<s> names only integers)
            seed = int(seed)
            if seed in figures:
                raise Missing(f"seed {seed} appears twice among {directories}")
            history_file = run / "history.json"
            history = (
                json.loads(history_file.read_text()) if history_file.is_file() else []
            )
            if at is None:
                entry = history[-1] if (run / "results.json").is_file() else None
            else:
                entry = next((e for e in history if e.get("iteration") == at), None)
            if entry is None or metric not in entry:
                left_out.append(seed)
            else:
                figures[seed] = 100 * float(entry[metric])
    return figures, left_out


def t_two_sided_p(t: float, df: int) -> float:
    """P(|T| >= |t|) for Student's t with df degrees of freedom: 1 minus twice the
    density's integral over [0, |t|] (trapezoidal, 200,001 points)."""
    x = np.linspace(0.0, abs(t), 200_001)
    log_scale = (
        math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    )
    density = np.exp(log_scale - (df + 1) / 2 * np.log1p(x * x / df))
    inner = float(np.sum((density[1:] + density[:-1]) * np.diff(x)) / 2)
    return max(0.0, 1.0 - 2.0 * inner)


def signed_rank_p(changes) -> float:
    """Exact two-sided p of Wilcoxon's signed-rank test (zeros dropped, ties given
    their mean rank): the null distribution of the positive ranks' sum, built by
    counting sign patterns rank by rank (ranks doubled, so that mean ranks of ties
    stay integers)."""
    changes = np.asarray([c for c in changes if c != 0], dtype=float)
    if len(changes) == 0:
        return 1.0
    magnitudes = np.abs(changes)
    doubled = [
        int(2 + 2 * np.sum(magnitudes < m) + np.sum(magnitudes == m) - 1)
        for m in magnitudes
    ]
    counts = np.zeros(sum(doubled) + 1)
    counts[0] = 1.0
    for rank in doubled:  # each rank's sign: absent (as is) or present (shifted)
        counts[rank:] = counts[rank:] + counts[:-rank].copy()
    centre = sum(doubled) / 2
    observed = abs(
        sum(r for r, c in zip(doubled, changes, strict=True) if c > 0) - centre
    )
    sums = np.arange(len(counts))
    return float(counts[np.abs(sums - centre) >= observed - 1e-9].sum() / counts.sum())


def _mean_range(values) -> str:
    return f"{np.mean(values):.2f} ({min(values):.2f}-{max(values):.2f})"


def compare(a: dict, b: dict) -> list[str]:
    """The table's lines for the seeds both settings have."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        raise Missing("the two settings have no seed in common")
    changes = [b[s] - a[s] for s in seeds]
    lines = ["| seed | A | B | B - A |", "|---|---|---|---|"]
    lines += [f"| {s} | {a[s]:.2f} | {b[s]:.2f} | {b[s] - a[s]:+.2f} |" for s in seeds]
    lines.append(
        f"| mean (range) | {_mean_range([a[s] for s in seeds])} | "
        f"{_mean_range([b[s] for s in seeds])} | {np.mean(changes):+.2f} |"
    )
    n = len(seeds)
    summary = f"B ahead on {sum(c > 0 for c in changes)} of {n} seeds"
    if n > 1:
        error = float(np.std(changes, ddof=1) / math.sqrt(n))
        summary += f"; mean change {np.mean(changes):+.2f}, standard error {error:.2f}"
        if error > 0:
            t = float(np.mean(changes)) / error
            summary += (
                f", paired t {t:.2f} on {n - 1} df (p = "
                f"{t_two_sided_p(t, n - 1):.3f} two-sided)"
            )
        summary += f"; Wilcoxon signed-rank p = {signed_rank_p(changes):.3f}"
    return [*lines, "", summary]


def main(argv):
    del argv
    try:
        a, a_out = seed_figures(FLAGS.a, FLAGS.metric, FLAGS.at)
        b, b_out = seed_figures(FLAGS.b, FLAGS.metric, FLAGS.at)
        lines = compare(a, b)
    except Missing as error:
        raise SystemExit(f"error: {error}") from None
    where = f"at iteration {FLAGS.at}" if FLAGS.at is not None else "at each run's end"
    print(
        f"{FLAGS.metric} (%) {where}; A = {','.join(FLAGS.a)}; B = {','.join(FLAGS.b)}"
    )
    for name, out in (("A", a_out), ("B", b_out)):
        if out:
            print(f"left out of {name} (not finished or not evaluated there): {out}")
    unpaired = sorted(set(a) ^ set(b))
    if unpaired:
        print(f"unpaired seeds, left out: {unpaired}")
    print("\n".join(lines))


if __name__ == "__main__":
    app.run(main)
