"""A probe outside the library: ZSKD's data impressions (Nayak et al., ICML 2019) on a
.keras teacher, to learn whether a non-adversarial synthesis takes LeNet-5-Half past
what the adversarial game gives it on Fashion-MNIST (docs/RESULTS.md, issue 20).

ZSKD, as its paper describes it: a class-similarity matrix from the teacher's last
Dense kernel (cosine similarity of the class weight vectors, each row min-max scaled
to [0, 1]); per class k, soft labels y ~ Dirichlet(beta * C[k]) with beta 1 for half
of them and 0.1 for the rest; for each y an input optimised from uniform noise so that
the teacher's softmax at temperature 20 matches y (cross entropy, Adam 0.01); then the
student learns the teacher's softmax at temperature 20 on those inputs. Here the
inputs are clipped to the pixel range [0, 1] after each step, zero concentrations are
raised to --min_concentration (a Dirichlet needs positive ones), and the student
trains with Adam (cosine) on randomly shifted impressions (pad 2, crop), the
teacher's outputs recomputed on each shifted batch. No training image is read; the
test set is read for the evaluation only.

  python bench/zskd_probe.py --teacher=runs/fmnist/lenet5.keras \
      --student=runs/fmnist/lenet5_half.keras \
      --data_dir=../shared/datasets/fashion-mnist \
      --output_dir=runs/fmnist/zskd --seed=0
"""

import json
import time

import keras
import numpy as np
import tensorflow as tf
from absl import flags

from zskt_tf import cli, runs, sources

flags.DEFINE_string("teacher", None, ".keras teacher ending in logits, [0, 1] inputs.")
flags.DEFINE_string("student", None, ".keras student architecture (fresh weights).")
flags.DEFINE_string("data_dir", None, "Fashion-MNIST IDX folder (test set evaluated).")
flags.DEFINE_string("output_dir", "runs/fmnist/zskd", "Where results go.")
flags.DEFINE_integer("impressions", 24_000, "Data impressions in all.")
flags.DEFINE_integer("synthesis_steps", 300, "Adam steps per impression batch.")
flags.DEFINE_integer("synthesis_batch", 2_000, "Impressions optimised together.")
flags.DEFINE_float("temperature", 20.0, "Softmax temperature (synthesis and KD).")
flags.DEFINE_float("min_concentration", 1e-3, "Floor of the Dirichlet concentration.")
flags.DEFINE_integer("epochs", 100, "Student epochs over the impressions.")
flags.DEFINE_float("student_lr", 1e-3, "Student Adam learning rate (cosine to 0).")
flags.DEFINE_integer("seed", 0, "Seed of the impressions and of the student.")
for name in ("teacher", "student", "data_dir"):
    flags.mark_flag_as_required(name)
flags.register_validator(
    "impressions",
    lambda n: n >= 128,
    "--impressions must be at least 128 (one student batch; the default is 24,000)",
)
FLAGS = flags.FLAGS


def class_similarity(teacher: keras.Model) -> np.ndarray:
    """Cosine similarity of the last Dense layer's class weight vectors, each row
    min-max scaled to [0, 1]."""
    kernel = teacher.layers[-1].kernel.numpy()  # (features, classes)
    unit = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    similarity = unit.T @ unit
    low = similarity.min(axis=1, keepdims=True)
    high = similarity.max(axis=1, keepdims=True)
    return (similarity - low) / (high - low)


def soft_labels(similarity, count, rng) -> np.ndarray:
    classes = similarity.shape[0]
    rows = []
    for k in range(classes):
        n = count // classes
        for beta, share in ((1.0, n // 2), (0.1, n - n // 2)):
            alpha = np.maximum(beta * similarity[k], FLAGS.min_concentration)
            rows.append(rng.dirichlet(alpha, share))
    return np.concatenate(rows).astype("float32")


def synthesise(teacher, targets, rng) -> np.ndarray:
    shape = (len(targets), *teacher.input_shape[1:])
    images = tf.Variable(rng.uniform(0, 1, shape).astype("float32"))
    targets = tf.constant(targets)
    optimizer = keras.optimizers.Adam(0.01)
    temperature = FLAGS.temperature

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = teacher(images, training=False) / temperature
            loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(targets, logits, from_logits=True)
            )
        optimizer.apply_gradients([(tape.gradient(loss, images), images)])
        images.assign(tf.clip_by_value(images, 0.0, 1.0))
        return loss

    for _ in range(FLAGS.synthesis_steps):
        loss = step()
    return images.numpy(), float(loss)


def load_test(data_dir):
    """The Fashion-MNIST test set, zero-padded to 32x32x1, pixels in [0, 1]."""
    arrays = sources.load_local(data_dir)
    images = np.pad(arrays.test_images, ((0, 0), (2, 2), (2, 2), (0, 0))) / 255.0
    return images.astype("float32"), arrays.test_labels


def main(argv):
    del argv
    rng = np.random.default_rng(FLAGS.seed)
    keras.utils.set_random_seed(FLAGS.seed)
    teacher = keras.models.load_model(FLAGS.teacher)
    teacher.trainable = False
    x_test, y_test = load_test(FLAGS.data_dir)
    out = runs.seed_dir(FLAGS.output_dir, FLAGS.seed)
    out.mkdir(parents=True, exist_ok=True)
    start = time.time()
    targets = soft_labels(class_similarity(teacher), FLAGS.impressions, rng)
    order = rng.permutation(len(targets))
    targets = targets[order]
    entropy = float(np.mean(-np.sum(targets * np.log(np.maximum(targets, 1e-12)), -1)))
    print(f"mean entropy of the soft labels {entropy:.4f} (the floor of the CE)")
    batches = []
    for begin in range(0, len(targets), FLAGS.synthesis_batch):
        images, loss = synthesise(
            teacher, targets[begin : begin + FLAGS.synthesis_batch], rng
        )
        batches.append(images)
        print(
            f"impressions {begin + len(images)}/{len(targets)}: CE {loss:.4f}, "
            f"{time.time() - start:.0f} s",
            flush=True,
        )
    impressions = np.concatenate(batches)
    synthesis_seconds = time.time() - start
    teacher_pred = teacher.predict(impressions, batch_size=1000, verbose=0)
    agreement = np.mean(teacher_pred.argmax(-1) == targets.argmax(-1))
    print(f"teacher argmax = target argmax on {100 * agreement:.1f}% of impressions")

    student = keras.models.clone_model(keras.models.load_model(FLAGS.student))
    steps = FLAGS.epochs * (len(impressions) // 128)
    optimizer = keras.optimizers.Adam(
        keras.optimizers.schedules.CosineDecay(FLAGS.student_lr, steps)
    )
    temperature = FLAGS.temperature

    @tf.function
    def train_step(x):
        x = tf.image.pad_to_bounding_box(x, 2, 2, 36, 36)
        x = tf.image.random_crop(x, tf.concat([[tf.shape(x)[0]], [32, 32, 1]], 0))
        soft = tf.nn.softmax(teacher(x, training=False) / temperature)
        with tf.GradientTape() as tape:
            logits = student(x, training=True) / temperature
            loss = tf.reduce_mean(
                keras.losses.categorical_crossentropy(soft, logits, from_logits=True)
            )
        grads = tape.gradient(loss, student.trainable_variables)
        optimizer.apply_gradients(zip(grads, student.trainable_variables, strict=True))
        return loss

    data = tf.data.Dataset.from_tensor_slices(impressions)
    history = []
    for epoch in range(1, FLAGS.epochs + 1):
        for x in data.shuffle(len(impressions), seed=FLAGS.seed + epoch).batch(
            128, drop_remainder=True
        ):
            loss = train_step(x)
        if epoch % 10 == 0 or epoch == FLAGS.epochs:
            logits = student.predict(x_test, batch_size=1000, verbose=0)
            accuracy = float(np.mean(logits.argmax(-1) == y_test))
            history.append((epoch, accuracy))
            print(
                f"epoch {epoch}: KD loss {float(loss):.4f}, test {100 * accuracy:.2f}%",
                flush=True,
            )
    result = {
        "seed": FLAGS.seed,
        "test_accuracy": history[-1][1],
        "history": history,
        "synthesis_seconds": round(synthesis_seconds),
        "total_seconds": round(time.time() - start),
        "impressions": len(impressions),
        "target_entropy": entropy,
        "teacher_agreement_with_targets": float(agreement),
        "flags": {
            name: FLAGS[name].value
            for name in (
                "impressions",
                "synthesis_steps",
                "synthesis_batch",
                "temperature",
                "min_concentration",
                "epochs",
                "student_lr",
            )
        },
    }
    (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    cli.run(main)
