"""Runs a program's main so that user mistakes print one line, not a traceback."""

from __future__ import annotations

import os
import sys

# Quiet TensorFlow's C++ start-up chatter before it is imported (programs only).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from zskt_tf.errors import UserError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C; the run can be resumed


def run(main) -> None:
    """absl.app.run(main), mapping UserError (and a full disk, wherever it strikes)
    to 'error: ...' and exit status 2, and an interruption (checkpoint saved) to one
    line and status 130."""
    from zskt_tf.checkpoints import Interrupted, disk_full

    def guarded(argv):
        logging.set_verbosity(logging.INFO)
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)
        except OSError as error:
            if not disk_full(error):
                raise
            print(
                f"error: no space left on device ({error}); free some disk space "
                "and rerun the same command (runs resume from their last checkpoint)",
                file=sys.stderr,
            )
            sys.exit(EXIT_USER_ERROR)
        except Interrupted as error:
            print(str(error), file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    app.run(guarded)


def parse_floats(text: str, name: str) -> tuple[float, ...]:
    """'0.3,0.6,0.8' -> (0.3, 0.6, 0.8), or a one-line UserError."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise UserError(
            f"--{name} must be comma-separated numbers, got {text!r}"
        ) from None


def define_strategy_flags() -> None:
    """--strategy and --tpu, shared by the training programs."""
    flags.DEFINE_string(
        "strategy",
        "default",
        "tf.distribute strategy: default (one device), mirrored (every local GPU), "
        "multi_worker (the cluster in TF_CONFIG), tpu. The global batch is split "
        "over the replicas; the results do not depend on their number.",
    )
    flags.DEFINE_string(
        "tpu", None, "--strategy=tpu: TPU name or grpc:// address (default: Colab's)."
    )


def strategy_from_flags():
    """The tf.distribute.Strategy that --strategy and --tpu name (one-line errors)."""
    from zskt_tf import distribution

    return distribution.make_strategy(flags.FLAGS.strategy, flags.FLAGS.tpu)
