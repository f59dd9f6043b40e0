"""The weight average of a zero-shot run (--student_ema) at one of its checkpoints,
evaluated four ways on the run's test set: the live student, the average with the
BatchNorm statistics it averaged, the average with its statistics measured anew on
the replay pool's batches when the run has a pool, else on the generator's images
(what zskt_tf keeps; --statistics_from chooses one), and the live weights with
statistics measured in the same way.

Runs that predate the refresh saved and reported the second; this measures what
the refresh changes on their own checkpoints, without training.

    python bench/average_statistics.py --run=runs/.../seed_0 --checkpoint=200
"""

import dataclasses
import json
import pathlib

from absl import app, flags

flags.DEFINE_string("run", None, "A seed directory of a --student_ema run.")
flags.DEFINE_integer("checkpoint", None, "Its checkpoint's iteration (default: last).")
flags.DEFINE_string("data_dir", None, "Local files of the run's dataset, if moved.")
flags.DEFINE_enum(
    "statistics_from",
    None,
    ["generator", "pool"],
    "Measure the statistics on fresh generator images or on batches of the run's "
    "replay pool, augmented and mixed as its student steps are (default: as "
    "zskt_tf does, the pool when the run has one).",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    import tensorflow as tf

    from zskt_tf import checkpoints, distill
    from zskt_tf.configs import DistillConfig
    from zskt_tf.zero_shot import ZeroShotTrainer

    run = pathlib.Path(FLAGS.run)
    record = json.loads((run / "config.json").read_text())
    fields = {field.name for field in dataclasses.fields(DistillConfig)}
    config = DistillConfig(**{k: v for k, v in record.items() if k in fields})
    config = dataclasses.replace(config, output_dir=str(run))
    if FLAGS.data_dir:
        config = dataclasses.replace(config, data_dir=FLAGS.data_dir)
    if not config.student_ema:
        raise app.UsageError(f"{run} was not run with --student_ema")
    trainer = ZeroShotTrainer(config, distill.check_inputs(config))
    directory = checkpoints.checkpoint_directory(run)
    prefix = (
        directory / f"ckpt-{FLAGS.checkpoint}"
        if FLAGS.checkpoint
        else pathlib.Path(tf.train.latest_checkpoint(str(directory)))
    )
    tf.train.Checkpoint(**trainer.checkpointables()).restore(
        str(prefix)
    ).expect_partial()
    if FLAGS.statistics_from == "pool" and trainer.pool is None:
        raise app.UsageError(f"{run} has no replay pool")
    trainer.refresh_from = FLAGS.statistics_from or trainer.refresh_from
    average = trainer.average
    averaged_stats = average.model.get_weights()
    refreshed = trainer.evaluate(0)  # measures the statistics anew first
    # The same weights with the averaged statistics: what the run reported.
    average.refreshed.set_weights(averaged_stats)
    as_averaged = trainer.evaluate(0)[trainer.metric]
    # The live weights with statistics measured the same way: what the measurement
    # itself costs, averaging aside.
    average.model.set_weights(trainer.student.get_weights())
    average.update()  # decay D towards the same weights: the live weights again
    live_measured = trainer.evaluate(0)[trainer.metric]
    print(
        json.dumps(
            {
                "run": str(run),
                "statistics_from": trainer.refresh_from,
                "checkpoint": prefix.name,
                "live": refreshed[trainer.metric + "_live"],
                "average, averaged statistics": as_averaged,
                "average, statistics measured anew": refreshed[trainer.metric],
                "live, statistics measured anew": live_measured,
            }
        )
    )


if __name__ == "__main__":
    flags.mark_flag_as_required("run")
    app.run(main)
