"""Logits → membrane probability, the one place it is written.

The U-Net emits one logit (a sigmoid gives membrane) or N class logits (a softmax; training
makes class 1 membrane for N > 1, see :func:`unet.trainer.segmentation_loss`). Training's loss,
validation, previews and blockwise inference all call :func:`membrane_probability`, so a
2-class model is read the same way everywhere.
"""

from __future__ import annotations

import torch

TRAINING_MEMBRANE_CLASS = 1  # the class the loss of unet.trainer calls membrane when n_classes > 1


def membrane_channel(n_classes: int, membrane_class: int | None = None) -> int:
    """Which softmax channel is membrane: as configured, else training's convention (class 1 for
    any n_classes > 1); 0 for a single sigmoid logit."""
    if n_classes <= 1:
        return 0  # a single sigmoid logit: membrane_class does not apply
    if membrane_class is not None:
        if not 0 <= membrane_class < n_classes:
            raise ValueError(f"membrane_class must be in [0, {n_classes}) for a model with {n_classes} "
                             f"classes, got {membrane_class}")
        return membrane_class
    return TRAINING_MEMBRANE_CLASS if n_classes > 1 else 0


def membrane_probability(logits: torch.Tensor, membrane_class: int | None = None) -> torch.Tensor:
    """Membrane probability (B, 1, H, W) float32 from logits (B, C, H, W): sigmoid of the one
    logit, or the softmax probability of the membrane channel (:func:`membrane_channel`)."""
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.sigmoid(logits[:, :1])
    c = membrane_channel(int(logits.shape[1]), membrane_class)
    return torch.softmax(logits, dim=1)[:, c : c + 1]
