"""Test setup. Without a CUDA GPU, the Triton kernels run on CPU tensors in Triton's interpreter:
TRITON_INTERPRET must be set before anything imports triton (``@triton.jit`` reads it when a
kernel is defined), so this file sets it first. With a GPU the kernels run compiled on CUDA
tensors and CPU tensors take the plain-PyTorch path."""

import os

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
