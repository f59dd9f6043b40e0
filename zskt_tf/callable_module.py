"""Modules that can be called like the function they are named after.

`zskt_tf.generator`, `zskt_tf.wide_resnet` and `zskt_tf.distill` are both a submodule
and the function a notebook calls. Python binds a package's attribute to the submodule
once the submodule is imported, so a function of the same name cannot live beside it;
instead the module itself is made callable. This also lets `import zskt_tf` stay light
(no TensorFlow until a model is built), so the command-line programs parse their flags
and answer --help before TensorFlow loads.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Callable


def make_callable(module_name: str, load: Callable[[], Callable]) -> None:
    """Calling the module `module_name` calls the function that `load()` returns
    (loaded at the first call, so a module can forward to one that imports it);
    `inspect.signature(module)` is that function's."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return load()(*args, **kwargs)

        @property
        def __signature__(self):
            return inspect.signature(load())

    sys.modules[module_name].__class__ = CallableModule
