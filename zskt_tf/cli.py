"""Runs a program's main so that user mistakes print one line, not a traceback."""

from __future__ import annotations

import dataclasses
import os
import sys
import types
import typing
from collections.abc import Iterable

# Quiet TensorFlow's C++ start-up chatter before it is imported (programs only).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from zskt_tf.errors import UserError  # noqa: E402

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # the shell's code for Ctrl-C; the run can be resumed


def run(main) -> None:
    """absl.app.run(main), mapping UserError (and a full disk, wherever it strikes)
    to 'error: ...' and exit status 2, and an interruption (checkpoint saved) to one
    line and status 130. `import zskt_tf` does not load TensorFlow (only main's own
    imports do), so --help and a bad flag are answered at once."""

    def guarded(argv):
        from zskt_tf.checkpoints import Interrupted, disk_full

        logging.set_verbosity(logging.INFO)
        try:
            return main(argv)
        except UserError as error:
            _fail(str(error))
        except OSError as error:
            if not disk_full(error):
                raise
            _fail(
                f"no space left on device ({error}); free some disk space and rerun "
                "the same command (runs resume from their last checkpoint)"
            )
        except Interrupted as error:
            print(str(error), file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    app.run(guarded, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, with a bad flag (unknown, malformed, a value outside its
    choices, a required one missing) reported as one 'error:' line and status 2,
    like every other user mistake, instead of absl's two 'FATAL' lines."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        lines = (line.strip() for line in str(error).splitlines())
        message = "; ".join(line for line in lines if line)
        _fail(f"{message} (--helpshort lists the flags)")


def _fail(message: str) -> None:
    """A user mistake: one 'error:' line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


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


def _flag_type(hint) -> type:
    """The flag type of a config field's annotation: int, float, str, bool or tuple
    (of floats); X | None counts as X."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        hint = args[0]
    if typing.get_origin(hint) is tuple:
        return tuple
    return hint


def _config_flags(config_class, skip: Iterable[str]) -> list[tuple]:
    """(field, flag name, type) of every field of config_class that is a flag."""
    hints = typing.get_type_hints(config_class)
    return [
        (field, field.metadata.get("flag") or field.name, _flag_type(hints[field.name]))
        for field in dataclasses.fields(config_class)
        if field.name not in skip and "help" in field.metadata
    ]


def define_config_flags(config_class, skip: Iterable[str] = ()) -> None:
    """Defines one absl flag per field of a zskt_tf.configs dataclass, with the
    field's default and help; a field without a default is a required flag.

    Args:
        config_class: e.g. zskt_tf.configs.DistillConfig.
        skip: fields the program sets itself (e.g. "seed" where --seeds is a list).
    """
    for field, name, kind in _config_flags(config_class, skip):
        help_text = field.metadata["help"]
        default = None if field.default is dataclasses.MISSING else field.default
        if field.metadata.get("choices"):
            flags.DEFINE_enum(name, default, list(field.metadata["choices"]), help_text)
        elif kind is bool:
            flags.DEFINE_boolean(name, default, help_text)
        elif kind is int:
            flags.DEFINE_integer(name, default, help_text)
        elif kind is float:
            flags.DEFINE_float(name, default, help_text)
        elif kind is tuple:
            flags.DEFINE_list(name, [str(v) for v in default or ()], help_text)
        else:
            flags.DEFINE_string(name, default, help_text)
        if field.default is dataclasses.MISSING:
            flags.mark_flag_as_required(name)


def config_from_flags(
    config_class, skip: Iterable[str] = (), preset: dict | None = None, **values
):
    """The config the parsed flags describe (plus `values` for skipped fields).

    preset: field values (zskt_tf.configs.PRESETS) that replace the defaults of the
    flags not given on the command line."""
    preset = preset or {}
    for field, name, kind in _config_flags(config_class, skip):
        if field.name in preset and not flags.FLAGS[name].present:
            values[field.name] = preset[field.name]
            continue
        value = getattr(flags.FLAGS, name)
        if kind is tuple:
            value = parse_floats(",".join(value), name)
        values[field.name] = value
    return config_class(**values)
