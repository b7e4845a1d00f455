"""Training AlexNet with the paper's recipe: ``python -m train.run`` (see train/run.py)."""

import os
import sys

# Idle OpenMP threads sleep instead of spinning. On a busy machine with few cores, spinning threads made
# training steps up to 10x slower (measured on 2 shared cores). It only takes effect if set before torch
# is imported, which is why it is here and not in run.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# ``python -m train.run`` and ``python -m train.prepare`` stop with one line, exit code 2, not a traceback,
# when the ``kernels`` that Python finds is not this project's (alexnet.check_kernels).
try:
    import alexnet  # noqa: F401
except ImportError as e:
    if e.name != "kernels":
        raise
    print(f"train: error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
