"""Runs a program's main so that user mistakes print one line, not a traceback."""

from __future__ import annotations

import os
import sys

# Quiet TensorFlow's C++ start-up chatter before it is imported (programs only).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, logging  # noqa: E402

from zskt_tf.errors import UserError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C; the run can be resumed


def run(main) -> None:
    """absl.app.run(main), mapping UserError to 'error: ...' and exit status 2, and an
    interruption (checkpoint saved) to one line and status 130."""
    from zskt_tf.checkpoints import Interrupted

    def guarded(argv):
        logging.set_verbosity(logging.INFO)
        try:
            return main(argv)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
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
