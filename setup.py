"""Installs the zskt_tf library and its command-line programs from bin/."""

import pathlib

from setuptools import find_packages, setup

ROOT = pathlib.Path(__file__).parent

setup(
    name="zskt_tf",
    version="0.1.0",
    description=(
        "Zero-shot Knowledge Transfer via Adversarial Belief Matching "
        "(Micaelli & Storkey, NeurIPS 2019) in TensorFlow 2 / Keras 3"
    ),
    long_description=(ROOT / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["zskt_tf", "zskt_tf.*"]),
    include_package_data=True,
    package_data={"zskt_tf": ["assets/*.npz", "assets/*/*"]},
    scripts=sorted(f"bin/{path.name}" for path in (ROOT / "bin").glob("zskt-tf-*")),
    install_requires=[
        # Keras 3 arrived with TensorFlow 2.16; the code uses Keras 3 APIs only.
        "tensorflow>=2.16",
        "keras>=3.0",
        # tf.summary needs it; TensorFlow >= 2.20 no longer installs it.
        "tensorboard>=2.16",
        "tensorflow-datasets>=4.9",
        "numpy>=1.26",
        "absl-py>=1.0",
        # PNG sample grids and accuracy curves; decoding of image-folder datasets.
        "pillow>=9.0",
        "matplotlib>=3.7",
    ],
    extras_require={
        "test": [
            "pytest>=7",
            # make test runs the files on two workers (the machines have 2 cores).
            "pytest-xdist>=3.5",
            "scipy>=1.10",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6",
            "ai-edge-litert>=1.2",
        ],
        # Running exported .tflite files with LiteRT instead of the deprecated
        # tf.lite.Interpreter.
        "tflite": ["ai-edge-litert>=1.2"],
        # SVHN's official .mat files.
        "svhn": ["scipy>=1.10"],
        # zskt-tf-import-torch reads the authors' PyTorch checkpoints.
        "torch": ["torch>=2.0"],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
