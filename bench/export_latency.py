"""Sizes and single-image CPU latency of a run's exports (SavedModel, TFLite).

Usage: python bench/export_latency.py --model_dir=runs/zskt/seed_0 [--runs=200]
"""

import json
import pathlib
import tempfile
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from zskt_tf import datasets, export, model_io

flags.DEFINE_string(
    "model_dir", "embedded:cifar10-wrn-16-2", "Run directory to export."
)
flags.DEFINE_integer("runs", 200, "Timed single-image calls per format.")
FLAGS = flags.FLAGS


def median_ms(fn, image_batches):
    for batch in image_batches[:10]:
        fn(batch)
    times = []
    for batch in image_batches:
        start = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def size_mb(path: pathlib.Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e6, 3)


def main(argv):
    del argv
    data = datasets.load_dataset("embedded:cifar10-test-2k")
    images = data.test_images[: FLAGS.runs]
    singles = [image[None] for image in images]
    model, config = model_io.load_network(FLAGS.model_dir)
    probabilities = tf.function(export.probabilities_fn(model, data.info))
    rows = [
        {
            "format": "keras (tf.function)",
            "latency_ms": median_ms(lambda x: probabilities(x).numpy(), singles),
        }
    ]
    with tempfile.TemporaryDirectory() as scratch:
        out = pathlib.Path(scratch)
        saved = export.export(FLAGS.model_dir, "saved_model", out)
        serve = tf.saved_model.load(str(saved)).signatures["serve_uint8"]
        rows.append(
            {
                "format": "saved_model",
                "size_mb": size_mb(saved),
                "latency_ms": median_ms(
                    lambda x: serve(pixels=tf.constant(x))["probabilities"].numpy(),
                    singles,
                ),
            }
        )
        for quantize in ("none", "dynamic", "float16"):
            path = export.export(FLAGS.model_dir, "tflite", out, quantize)
            interpreter = tf.lite.Interpreter(model_path=str(path))
            interpreter.allocate_tensors()
            source = interpreter.get_input_details()[0]["index"]
            target = interpreter.get_output_details()[0]["index"]

            def invoke(x, it=interpreter, s=source, t=target):
                it.set_tensor(s, x)
                it.invoke()
                return it.get_tensor(t)

            rows.append(
                {
                    "format": f"tflite {quantize}",
                    "size_mb": size_mb(path),
                    "latency_ms": median_ms(invoke, singles),
                }
            )
    summary = {
        "model": f"WRN-{config['depth']}-{config['width']}",
        "source": FLAGS.model_dir,
        "rows": rows,
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    app.run(main)
