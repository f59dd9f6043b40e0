"""How far zskt_tf's loop and the PyTorch reference of the authors' loop drift apart.

Both start from identical weights and see the same noise (tests/test_parity.py's
set-up); this prints, per outer iteration, the relative difference of the generator
loss and of the last student loss, in float64 and in float32.

Usage: python bench/parity_drift.py [--iterations=10] [--teacher=randomised|authors]
           [--batch_size=32]
"""

import contextlib
import json

import numpy as np
import torch
from absl import app, flags

from tests import test_parity, torch_reference
from zskt_tf import torch_import

flags.DEFINE_integer("iterations", 10, "Outer iterations.")
flags.DEFINE_integer("batch_size", 32, "Pseudo batch size.")
flags.DEFINE_enum("teacher", "randomised", ["randomised", "authors"], "Teacher.")
FLAGS = flags.FLAGS


def teacher():
    if FLAGS.teacher == "authors":
        state = torch_import.read_state_dict(test_parity.AUTHORS_TEACHER, trust=True)
        net = torch_reference.TorchWRN(16, 1)
        net.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, False)
        return net.eval(), (16, 1)
    net = torch_reference.randomised_wrn(10, 2, seed=1)
    with torch.no_grad():
        net.fc.weight.mul_(8.0)
    return net, (10, 2)


def main(argv):
    del argv
    for precision in ("float64", "float32"):
        scope = (
            torch_reference.float64
            if precision == "float64"
            else contextlib.nullcontext
        )
        with scope():
            net, arch = teacher()
            student = (16, 1) if FLAGS.teacher == "authors" else (10, 1)
            ours, theirs = test_parity.run_both(
                net, arch, student, FLAGS.batch_size, FLAGS.iterations
            )
        relative = np.abs(ours - theirs) / np.abs(theirs)
        for iteration, (generator, student_loss) in enumerate(relative, start=1):
            print(
                json.dumps(
                    {
                        "precision": precision,
                        "iteration": iteration,
                        "generator_loss": float(ours[iteration - 1, 0]),
                        "relative_difference_generator_loss": float(generator),
                        "relative_difference_student_loss": float(student_loss),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
