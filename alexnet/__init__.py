"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012) on the fused ops, and its two-tower split."""

from .model import AlexNet, AlexNetConfig, saved_activation_bytes

__all__ = ["AlexNet", "AlexNetConfig", "saved_activation_bytes"]
