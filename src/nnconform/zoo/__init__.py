"""The embedded Fashion-MNIST zoo: architectures (``models``) and the training recipe (``build``)."""

from .models import ARCHITECTURES, build_architecture

__all__ = ["ARCHITECTURES", "build_architecture"]
