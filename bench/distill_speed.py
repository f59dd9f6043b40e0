"""Seconds per outer zero-shot iteration: zskt_tf vs a loop in the authors' style.

Both run in this process on the same models at batch 128 (n_g=1, n_s=10):
- baseline: eager per-step updates; the generator (and the teacher) re-run for every
  student step, as the authors' PyTorch loop does;
- zskt_tf: zskt_tf.distill.make_iteration_fn, one compiled function per iteration.
Peak memory is the process RSS sampled during each measurement.

With --jit it also times XLA: each step compiled (what --jit does) and, for
comparison, the whole iteration compiled. --mixed_precision also times zskt_tf with
the mixed_float16 policy and a loss-scaled Adam (what --mixed_precision does).
--replicas=1,2 times zskt_tf under a MirroredStrategy over that many logical CPU
devices (the same two cores: this shows the overhead of distribution, not a speed-up).

Usage: python -m bench.distill_speed [--pairs=16-2:16-1,40-2:16-1] [--iterations=2]
           [--jit] [--mixed_precision] [--replicas=1,2]
"""

import json

import keras
import tensorflow as tf
from absl import app, flags

from bench.common import peak_memory, time_per_call
from zskt_tf import adversarial, distill, losses, training
from zskt_tf.generator import generator as build_generator
from zskt_tf.wide_resnet import wide_resnet

flags.DEFINE_list("pairs", ["16-2:16-1", "40-2:16-1"], "teacher:student WRNs.")
flags.DEFINE_integer("iterations", 2, "Timed outer iterations per measurement.")
flags.DEFINE_integer("batch_size", 128, "Pseudo batch size.")
flags.DEFINE_boolean("jit", False, "Also time zskt_tf with XLA.")
flags.DEFINE_boolean("mixed_precision", False, "Also time zskt_tf in mixed_float16.")
flags.DEFINE_list("replicas", ["1"], "Replica counts to time zskt_tf at.")
FLAGS = flags.FLAGS
TAPS = ("block1", "block2", "block3")


def build(teacher_arch, student_arch, strategy=None, mixed_precision=False):
    strategy = strategy or tf.distribute.get_strategy()
    synchronized = strategy.num_replicas_in_sync > 1
    keras.utils.set_random_seed(0)
    with strategy.scope(), training.mixed_precision_scope(mixed_precision):
        teacher = wide_resnet(*teacher_arch, name="teacher")
        teacher.trainable = False
        student = wide_resnet(*student_arch, name="student", synchronized=synchronized)
        gen = build_generator(100, (32, 32, 3), synchronized=synchronized)
        optimizers = [adversarial.adam(lr, 5.0, mixed_precision) for lr in (2e-3, 1e-3)]
        optimizers[0].build(student.trainable_variables)
        optimizers[1].build(gen.trainable_variables)
    return teacher, student, gen, optimizers


def zskt_variants():
    """(name, jit, whole-iteration XLA, replicas, mixed precision) of each timing."""
    variants = [("zskt_tf", False, False, 1, False)]
    if FLAGS.jit:
        variants += [("zskt_tf_xla", True, False, 1, False)]
        variants += [("zskt_tf_xla_whole_iteration", True, True, 1, False)]
    if FLAGS.mixed_precision:
        variants += [("zskt_tf_mixed_float16", False, False, 1, True)]
    for count in (int(r) for r in FLAGS.replicas if int(r) > 1):
        variants += [(f"zskt_tf_{count}_replicas", False, False, count, False)]
    return variants


def make_step(teacher_arch, student_arch, jit, whole, replicas, mixed_precision):
    strategy = (
        tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(replicas)])
        if replicas > 1
        else None
    )
    nets = build(teacher_arch, student_arch, strategy, mixed_precision)
    config = distill.DistillConfig(
        teacher="",
        output_dir="",
        jit=jit and not whole,
        batch_size=FLAGS.batch_size,
        mixed_precision=mixed_precision,
    )
    game = adversarial.AdversarialGame(*nets[:3], *nets[3], config, strategy)
    if whole:  # the earlier --jit: one XLA cluster with the tf.range loop inside
        return tf.function(game._iteration, jit_compile=True)
    return game.iteration


def authors_style_iteration(teacher, student, gen, optimizers, z, n_s=10):
    student_opt, gen_opt = optimizers
    with tf.GradientTape() as tape:
        images = gen(z, training=True)
        loss = losses.generator_loss(
            student(images, training=True)["logits"],
            teacher(images, training=False)["logits"],
        )
    grads = tape.gradient(loss, gen.trainable_variables)
    gen_opt.apply(grads, gen.trainable_variables)
    for _ in range(n_s):
        images = gen(z, training=True)  # re-run for every student step
        t_out = teacher(images, training=False)
        with tf.GradientTape() as tape:
            s_out = student(images, training=True)
            loss = losses.student_loss(
                s_out["logits"],
                t_out["logits"],
                [s_out[k] for k in TAPS],
                [t_out[k] for k in TAPS],
                beta=250.0,
            )
        grads = tape.gradient(loss, student.trainable_variables)
        student_opt.apply(grads, student.trainable_variables)


def main(argv):
    del argv
    for pair in FLAGS.pairs:
        teacher_arch, student_arch = (
            tuple(int(v) for v in arch.split("-")) for arch in pair.split(":")
        )
        z = tf.random.normal((FLAGS.batch_size, 100))
        row = {
            "teacher": f"WRN-{teacher_arch[0]}-{teacher_arch[1]}",
            "student": f"WRN-{student_arch[0]}-{student_arch[1]}",
            "batch_size": FLAGS.batch_size,
        }
        for name, *variant in zskt_variants():
            step = make_step(teacher_arch, student_arch, *variant)
            memory = {}
            with peak_memory(memory):
                seconds = time_per_call(
                    lambda s=step, z=z: s(z, tf.constant(0, tf.int64))[
                        "train/student_loss"
                    ].numpy(),
                    FLAGS.iterations,
                )
            row[f"{name}_s_per_iteration"] = round(seconds, 3)
            row[f"{name}_peak_rss_mib"] = memory["peak_rss_mib"]
        teacher, student, gen, optimizers = build(teacher_arch, student_arch)
        memory = {}
        with peak_memory(memory):
            seconds = time_per_call(
                lambda nets=(teacher, student, gen, optimizers), z=z: (
                    authors_style_iteration(*nets, z)
                ),
                FLAGS.iterations,
            )
        row["authors_style_s_per_iteration"] = round(seconds, 3)
        row["authors_style_peak_rss_mib"] = memory["peak_rss_mib"]
        row["ratio"] = round(row["zskt_tf_s_per_iteration"] / seconds, 3)
        print(json.dumps(row), flush=True)


def split_cpu(argv):
    """Splits the CPU into logical devices before TensorFlow uses it."""
    count = max(int(r) for r in FLAGS.replicas)
    if count > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    main(argv)


if __name__ == "__main__":
    app.run(split_cpu)
