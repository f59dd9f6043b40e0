"""The run loop every trainer shares: checkpoints, resume, evaluation, logs, stops.

A trainer (teacher/few-shot SGD, zero-shot distillation) owns its networks, its
compiled step and its outputs; run() owns the clock and everything around it:

- the step counter and elapsed time, checkpointed with the trainer's objects, so
  rerunning the same command resumes where the newest readable checkpoint left off
  (damaged ones are set aside, zskt_tf.checkpoints.resume);
- running means of the step's metrics: TensorBoard scalars every log_every steps,
  and per-evaluation window means in history.json (both checkpointed, so a resumed
  run logs the same values as an uninterrupted one);
- evaluations every eval_every steps and at the end, a progress line with ETA;
- stops: SIGINT/SIGTERM and stop_at save a checkpoint, let the trainer write its
  current outputs and raise checkpoints.Interrupted; a non-finite loss raises a
  one-line UserError and keeps the last good checkpoint;
- timeline.json: the time spent in training steps (and wall time) at each
  evaluation, for time-to-accuracy curves;
- a full disk ends the run with one line, the last checkpoint intact;
- results.json at the end: the trainer's results plus wall time and speed.

Under tf.distribute every process runs the loop (evaluations and checkpoint saves
are collective); only the chief writes history, logs, results and checkpoints that
are kept (zskt_tf.distribution.is_chief), and every process resumes from the run
directory's checkpoint, whatever strategy wrote it.
"""

from __future__ import annotations

import abc
import dataclasses
import pathlib
import time
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf

from zskt_tf import checkpoints, distribution, runs
from zskt_tf.errors import UserError
from zskt_tf.progress import Progress

HISTORY_FILE = "history.json"
# Time at each evaluation: in training steps only, and wall time (time to accuracy).
TIMELINE_FILE = "timeline.json"


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """How long a run is and how often it evaluates, checkpoints and logs.

    step_name names the clock in history.json and the checkpoint ("step" for SGD
    runs, "iteration" for zero-shot runs); evaluate_at_start records the untrained
    network as the first history entry.
    """

    output_dir: str | pathlib.Path
    total_steps: int
    eval_every: int
    checkpoint_every: int | None = None  # default: at every evaluation
    log_every: int = 50
    stop_at: int | None = None
    step_name: str = "step"
    progress_label: str = "step"
    evaluate_at_start: bool = False
    # When checkpoints exist but none reads back, start again from step 0 instead
    # of stopping (the damaged ones are kept aside; zskt_tf.checkpoints.resume).
    restart: bool = False
    # The evaluation field results.json reports as the run's result.
    metric: str = "test_accuracy"

    def checkpoint_interval(self) -> int:
        return self.checkpoint_every or self.eval_every


class Trainer(abc.ABC):
    """What a training method gives the run loop."""

    #: Metric tags a step returns; each must be finite, or the run stops.
    loss_tags: tuple[str, ...] = ()

    @abc.abstractmethod
    def checkpointables(self) -> dict:
        """Objects to checkpoint besides the clock: networks, optimisers, RNGs."""

    @abc.abstractmethod
    def batches(self, step: int, end: int) -> Iterable:
        """The inputs of steps step, step + 1, ...; may end before `end` (e.g. at an
        epoch boundary), in which case it is called again from where it ended."""

    @abc.abstractmethod
    def train_step(self, batch, step: int) -> dict:
        """One training step at 0-based `step`; returns {tag: scalar tensor}."""

    @abc.abstractmethod
    def evaluate(self, step: int) -> dict:
        """Evaluation fields of the history entry at `step` (e.g. test accuracy)."""

    def log_scalars(self, step: int) -> dict:
        """Extra TensorBoard scalars at log time (e.g. learning rates)."""
        del step
        return {}

    def on_evaluation(self, entry: dict, history: list[dict]) -> None:
        """Called with each new history entry (for logging, warnings, images)."""
        del entry, history

    def on_stop(self, history: list[dict]) -> None:
        """Called after the checkpoint of a stop (Ctrl-C or stop_at)."""
        del history

    @abc.abstractmethod
    def finish(self, history: list[dict], timing: dict) -> dict:
        """Writes the final outputs; returns the method's fields of results.json.

        timing holds the loop's step count, wall time and seconds per step."""


def _window_key(tag: str) -> str:
    """History key of a metric's window mean: its tag without the "train/" prefix."""
    return tag.split("/", 1)[1] if tag.startswith("train/") else tag


class _Metrics:
    """Running means of the step metrics, by tag, with checkpointable variables."""

    def __init__(self, tags: Iterable[str]):
        self.means = {tag: keras.metrics.Mean(name=tag) for tag in tags}

    def variables(self) -> list:
        # Keras 3 metrics are not trackable themselves; their variables are.
        return [v for metric in self.means.values() for v in metric.variables]

    def update(self, values: dict) -> None:
        for tag, value in values.items():
            self.means[tag].update_state(value)

    def collect(self) -> dict[str, float]:
        """The means since the last collect(), then reset."""
        results = {}
        for tag, metric in self.means.items():
            results[tag] = float(metric.result())
            metric.reset_state()
        return results


class _Run:
    """State of one run() call; its methods are the loop's phases."""

    def __init__(
        self, trainer: Trainer, settings: LoopSettings, tags: Iterable[str], strategy
    ):
        self.trainer, self.settings = trainer, settings
        self.output_dir = pathlib.Path(settings.output_dir)
        self.chief = distribution.is_chief(strategy)
        self.step = tf.Variable(0, dtype=tf.int64, name=settings.step_name)
        self.elapsed = tf.Variable(0.0, dtype=tf.float64, name="elapsed_seconds")
        # Time spent in training steps only (no evaluations, checkpoints or logs),
        # over every session of the run: the clock of time-to-accuracy curves.
        self.train_clock = tf.Variable(0.0, dtype=tf.float64, name="train_seconds")
        self.log_window, self.eval_window = _Metrics(tags), _Metrics(tags)
        # Every process restores from the run directory; only the chief repairs it.
        self.checkpoint, _ = checkpoints.resume(
            dict(
                **trainer.checkpointables(),
                **{settings.step_name: self.step},
                elapsed=self.elapsed,
                log_metrics=self.log_window.variables(),
                eval_metrics=self.eval_window.variables(),
            ),
            self.output_dir,
            restart=settings.restart,
            repair=self.chief,
            optional=dict(train_seconds=self.train_clock),
        )
        self.manager = checkpoints.checkpoint_manager(
            self.checkpoint, distribution.checkpoint_dir(strategy, self.output_dir)
        )
        self.history = self._load_until_step(HISTORY_FILE)
        self.timeline = self._load_until_step(TIMELINE_FILE)
        self.session_start = time.perf_counter()
        self.start_elapsed = float(self.elapsed)
        self.start_step = int(self.step)
        self.train_seconds = 0.0

    def _load_until_step(self, filename: str) -> list[dict]:
        """A per-evaluation record (history.json, timeline.json) up to the restored
        step: later entries belong to a checkpoint that was never saved."""
        path = self.output_dir / filename
        entries = runs.read_json(path) if path.exists() else []
        name = self.settings.step_name
        return [entry for entry in entries if entry[name] <= int(self.step)]

    def save(self) -> None:
        self.elapsed.assign(self.wall_seconds())
        previous = self.manager.latest_checkpoint
        try:
            self.manager.save(checkpoint_number=int(self.step))
        except (OSError, tf.errors.OpError) as error:
            # A full disk or a lost mount: the previous checkpoint is whole (the
            # index names a new checkpoint only once its files are written).
            raise UserError(
                f"cannot write checkpoint {int(self.step)} in {self.output_dir} "
                f"({checkpoints.describe(error)}); the previous "
                f"checkpoint ({previous or 'none yet'}) is intact: "
                f"{'free some disk space' if checkpoints.disk_full(error) else 'fix'}"
                " and rerun the same command to resume"
            ) from None

    def wall_seconds(self) -> float:
        return self.start_elapsed + time.perf_counter() - self.session_start

    def record(self, step: int, window: dict) -> None:
        """Evaluates, appends the history entry and writes history.json."""
        entry = {self.settings.step_name: step, **self.trainer.evaluate(step)}
        entry |= {_window_key(tag): value for tag, value in window.items()}
        self.history.append(entry)
        for key, value in entry.items():
            if key.startswith("test_"):
                tf.summary.scalar(f"test/{key[len('test_') :]}", value, step=step)
        self.timeline.append(
            {
                self.settings.step_name: step,
                "train_seconds": round(float(self.train_clock), 2),
                "wall_seconds": round(self.wall_seconds(), 1),
            }
        )
        self.trainer.on_evaluation(entry, self.history)
        runs.write_json(self.output_dir / HISTORY_FILE, self.history)
        runs.write_json(self.output_dir / TIMELINE_FILE, self.timeline)

    def stop(self, at_stop: bool) -> None:
        """at_stop: the stop is stop_at's (StoppedAt), not a signal's (Interrupted)."""
        self.save()
        self.trainer.on_stop(self.history)
        error = checkpoints.StoppedAt if at_stop else checkpoints.Interrupted
        raise error(
            f"{self.settings.step_name} {int(self.step)}/{self.settings.total_steps}"
        )

    def check_finite(self, values: dict, step: int) -> None:
        losses = {tag: float(values[tag]) for tag in self.trainer.loss_tags}
        if not np.all(np.isfinite(list(losses.values()))):
            described = ", ".join(f"{tag} {value}" for tag, value in losses.items())
            raise UserError(
                f"non-finite loss at {self.settings.step_name} {step + 1} "
                f"({described}); the last good checkpoint "
                f"({self.manager.latest_checkpoint}) is kept. Lower the learning "
                "rate(s) or drop --mixed_precision"
            )

    def log(self, step: int) -> None:
        for tag, value in self.log_window.collect().items():
            tf.summary.scalar(tag, value, step=step)
        for tag, value in self.trainer.log_scalars(step).items():
            tf.summary.scalar(tag, value, step=step)

    def after_step(self, values: dict, guard) -> None:
        """Bookkeeping after one step: means, logs, evaluation, stop, checkpoint."""
        settings, step = self.settings, int(self.step)
        self.log_window.update(values)
        self.eval_window.update(values)
        last = step == settings.total_steps
        if step % settings.log_every == 0 or last:
            self.log(step)
        if step % settings.eval_every == 0 or last:
            self.record(step, self.eval_window.collect())
        stop_requested = settings.stop_at is not None and step >= settings.stop_at
        if (guard.requested or stop_requested) and not last:
            self.stop(at_stop=not guard.requested)
        if step % settings.checkpoint_interval() == 0:
            self.save()

    def train(self, guard) -> None:
        settings, trainer = self.settings, self.trainer
        progress = Progress(
            settings.progress_label,
            settings.total_steps,
            start=int(self.step),
            stop_at=settings.stop_at,
        )
        stop_at, total = settings.stop_at, settings.total_steps
        if stop_at is not None and stop_at <= int(self.step) < total:
            self.stop(at_stop=True)  # already there (a rerun with the same stop_at)
        while int(self.step) < total:
            # Batches are drawn lazily (zero-shot noise comes from a checkpointed
            # generator), so every stop is decided in after_step, before the next one.
            for batch in trainer.batches(int(self.step), total):
                step = int(self.step)
                if step >= total:
                    raise ValueError("Trainer.batches went past the end of the run")
                started = time.perf_counter()
                values = trainer.train_step(batch, step)
                self.check_finite(values, step)
                seconds = time.perf_counter() - started
                self.train_seconds += seconds
                self.train_clock.assign_add(seconds)
                self.step.assign_add(1)
                progress.update(
                    step + 1,
                    " ".join(
                        f"{_window_key(tag)} {float(values[tag]):.4f}"
                        for tag in trainer.loss_tags
                    ),
                )
                self.after_step(values, guard)

    def results(self) -> dict:
        session_seconds = time.perf_counter() - self.session_start
        steps = int(self.step) - self.start_step
        return {
            f"{self.settings.step_name}s": int(self.step),
            "wall_time_seconds": round(self.start_elapsed + session_seconds, 1),
            f"seconds_per_{self.settings.step_name}": round(
                self.train_seconds / max(steps, 1), 4
            ),
        }


def run(
    trainer: Trainer, settings: LoopSettings, tags: Iterable[str], strategy=None
) -> dict:
    """Runs (or resumes) trainer in settings.output_dir until total_steps.

    Args:
        trainer: the method: its objects, batches, step, evaluation and outputs.
        settings: the run's length and intervals.
        tags: the metric tags train_step returns.
        strategy: the tf.distribute strategy the trainer runs under (it decides
            which process writes); default: the current context's.

    Returns:
        The results dict also written to results.json: the trainer's fields, the
        final test accuracy, the number of steps, wall time, seconds per step (time
        in training steps only) and every evaluation ("history").

    Raises:
        checkpoints.Interrupted: SIGINT/SIGTERM or stop_at; a checkpoint was saved.
        UserError: a non-finite loss (the last good checkpoint is kept); a full
            disk (the last checkpoint is intact); checkpoints that all fail to read
            back, unless settings.restart.
    """
    strategy = strategy or tf.distribute.get_strategy()
    loop = None
    try:
        loop = _Run(trainer, settings, tags, strategy)
        return _run(loop, settings)
    except (OSError, RuntimeError, tf.errors.OpError) as error:
        if not checkpoints.disk_full(error):
            raise
        # A write other than a checkpoint's (history, weights, pictures) failed.
        latest = loop.manager.latest_checkpoint if loop else None
        raise UserError(
            f"no space left on device ({checkpoints.describe(error)});"
            f" the last checkpoint ({latest or 'none yet'}) is intact: free some "
            "disk space and rerun the same command to resume"
        ) from None


def _run(loop: _Run, settings: LoopSettings) -> dict:
    trainer = loop.trainer
    writer = (
        tf.summary.create_file_writer(str(loop.output_dir / "logs"))
        if loop.chief
        else tf.summary.create_noop_writer()
    )
    try:
        with checkpoints.InterruptGuard() as guard, writer.as_default():
            if settings.evaluate_at_start and not loop.history:
                loop.record(0, {})  # the untrained network; a resumed run keeps it
            loop.train(guard)
    finally:
        writer.close()  # however the run ends, no file is left open
    loop.save()
    timing = loop.results()
    results = {
        settings.metric: loop.history[-1][settings.metric],
        **trainer.finish(loop.history, timing),
        **timing,
        "history": loop.history,
        "timeline": loop.timeline,
    }
    if loop.chief:
        runs.write_json(loop.output_dir / runs.RESULTS_FILE, results)
    return results
