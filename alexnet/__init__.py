"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) on the fused ops, and its two-tower split."""

import importlib.util
import os
import sys


def check_kernels() -> None:
    """Raise ImportError (``name="kernels"``, a one-line message) if ``import kernels`` would give another
    package than this project's ``kernels``, the one beside this package. A package of that name found
    first on ``sys.path`` (Hugging Face's kernel hub on PyPI is one), or imported before, would otherwise
    be used silently. (Not found at all: ``import kernels`` says so.)"""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    module = sys.modules.get("kernels")
    spec = getattr(module, "__spec__", None) if module is not None else importlib.util.find_spec("kernels")
    if module is None and spec is None:
        return
    where = next(iter(spec.submodule_search_locations or [spec.origin]), None) if spec is not None else None
    ours = os.path.join(root, "kernels")
    if where and os.path.exists(where) and os.path.exists(ours) and os.path.samefile(where, ours):
        return
    raise ImportError(f"another package named kernels ({where or module}; Hugging Face's kernel hub on PyPI "
                      f"is one) shadows this project's: uninstall it (pip uninstall kernels) or use another "
                      f"virtual environment, or run from the project's root ({root}), where Python finds "
                      f"this project's first", name="kernels")


check_kernels()

__all__ = ["AlexNet", "AlexNetConfig", "saved_activation_bytes", "check_kernels"]


def __getattr__(name: str):
    """The model's names load on first use, and torch with them: ``import alexnet`` stays cheap, so that
    ``python -m train.run`` checks ``kernels`` (train/__init__.py) before its Ctrl-C handler is in place
    without spending the seconds torch takes to import."""
    if name in ("AlexNet", "AlexNetConfig", "saved_activation_bytes"):
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'alexnet' has no attribute {name!r}")
