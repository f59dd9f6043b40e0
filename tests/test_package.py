"""The package's surface: a light `import zskt_tf` and callable model builders."""

import inspect
import subprocess
import sys

import pytest

import zskt_tf
from tests.helpers import HANG_GUARD_SECONDS, REPO, run_program

# What the command-line programs import before they parse their flags.
_LIGHT_IMPORT = (
    "import sys, zskt_tf, zskt_tf.cli, zskt_tf.configs;"
    "print(sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))"
)


def test_import_and_flag_parsing_do_not_load_tensorflow():
    loaded = subprocess.run(
        [sys.executable, "-c", _LIGHT_IMPORT],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        timeout=HANG_GUARD_SECONDS,
    ).stdout.split("\n")[-2]
    assert loaded == "[]"


def test_help_is_answered_without_tensorflow():
    # absl answers --helpshort with exit status 1; the usage text is what matters.
    result = run_program("zskt-tf-distill", "--helpshort", check=False)
    assert "--teacher" in result.stdout
    assert "tensorflow" not in result.stderr.lower()


@pytest.mark.parametrize("name", ["generator", "wide_resnet", "distill"])
def test_callable_modules_show_their_function(name):
    from zskt_tf import api

    module = getattr(zskt_tf, name)
    # distill forwards to the Keras-style zskt_tf.api.distill; the others to their own.
    function = api.distill if name == "distill" else getattr(module, name)
    assert inspect.signature(module) == inspect.signature(function)


def test_builders_are_the_same_whichever_way_they_are_imported():
    from zskt_tf import generator, wide_resnet
    from zskt_tf.wide_resnet import wide_resnet as wide_resnet_function

    assert generator is zskt_tf.generator
    model = wide_resnet(10, 1, input_shape=(8, 8, 3))
    assert model.name == wide_resnet_function(10, 1, input_shape=(8, 8, 3)).name
    assert generator(z_dim=4, image_shape=(8, 8, 3)).output_shape == (None, 8, 8, 3)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        zskt_tf.nothing_here  # noqa: B018
