"""Training AlexNet with the paper's recipe: ``python -m train.run`` (see train/run.py)."""

import os

# Idle OpenMP threads sleep instead of spinning. On a busy machine with few cores, spinning threads made
# training steps up to 10x slower (measured on 2 shared cores). It only takes effect if set before torch
# is imported, which is why it is here and not in run.py.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
