"""Predictors: what blockwise inference runs on each batch of tiles.

A *predictor* is any callable mapping a batch of tiles, a float32 tensor (B, 1, H, W) of raw
intensities (0..255 for uint8 volumes) on the engine's device, to a tensor (B, C, H, W) whose
channel 0 is the membrane probability in [0, 1]. The batch is the engine's scratch buffer, refilled
for every batch: a predictor may compute in it and return it. It may carry a ``device`` attribute (a
``torch.device``) naming where the engine should put the tiles; without one, the CPU.
Predictors must not synchronise with the host (no ``.cpu()``, ``.item()``): the engine keeps
the GPU queue full by never waiting on a batch.

Tests use arithmetic predictors (``lambda x: x + 1``, :class:`AffinePredictor`) so stitching
is checked exactly; production uses :class:`ModelPredictor` around a U-Net.
"""

from __future__ import annotations

import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from unet.infer_config import InferConfig
from unet.membrane import membrane_channel, membrane_probability  # noqa: F401 (re-exported)
from unet.model import UNetConfig
from unet.slice_prediction import fit_padding
from unet.tta import tta_average

# Intensities are scaled to [0, 1] as in training (uint8 EM / 255).
INPUT_SCALE = 1.0 / 255.0


class AffinePredictor:
    """``x * scale + offset`` (after an optional sleep): a picklable arithmetic predictor for tests
    and benchmarks of the engine itself; ``AffinePredictor(1 / 255)`` costs next to nothing: on the
    CPU it computes in place in the engine's batch buffer (one numpy pass, no allocation).
    ``functools.partial(AffinePredictor, ...)`` is a factory."""

    # Its CPU arithmetic is one numpy pass in the calling thread, so the engine may compute blocks
    # in parallel (InferConfig.compute_threads_for); a torch model parallelises each pass itself.
    single_threaded = True

    def __init__(self, scale: float = 1.0, offset: float = 0.0, delay_s: float = 0.0,
                 device: str | None = None) -> None:
        self.scale, self.offset, self.delay_s = scale, offset, delay_s
        if device is not None:  # where the engine puts the tiles (default: the CPU)
            self.device = resolve_device(device)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        if self.delay_s:
            time.sleep(self.delay_s)
        if batch.device.type == "cpu":
            # numpy, in place: one single-threaded pass, so that a predictor meant to cost nothing
            # neither allocates nor wakes torch's intra-op thread pool (whose spinning threads
            # compete with the engine's reader and writer threads on a small machine).
            x = batch.numpy()
            if self.scale != 1:
                np.multiply(x, np.float32(self.scale), out=x)
            if self.offset:
                np.add(x, np.float32(self.offset), out=x)
            return batch
        out = batch * self.scale if self.scale != 1 else batch
        return out + self.offset if self.offset else out


def resolve_device(name: str) -> torch.device:
    """'auto' → CUDA if available, else CPU; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available")
    return dev


def effective_precision(cfg: InferConfig, device: torch.device) -> str:
    if cfg.precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    return cfg.precision


# Peak host memory of a U-Net forward pass on the CPU (fp32, inference mode), bytes per input pixel
# and first-level channel: measured 30, 27 and 25 for base 16, 32 and 64 at depth 5 (peak RSS of a
# 1024² tile less that of a 512² one; the default base-64 net takes 1.6 KB a pixel, so the default
# 2 x 2560² batch about 21 GB).
CPU_BYTES_PER_CHANNEL_PIXEL = 32


class ModelPredictor:
    """A U-Net as a predictor: tiles (B, 1, H, W) of raw intensities → membrane probability (B, 1, H, W).

    On CUDA: bf16 autocast, channels_last, optional ``torch.compile`` (fixed batch shapes: the
    engine pads the last batch of a block). On CPU: fp32 (or bf16 if asked), channels_last too
    (oneDNN's convolutions: 1.4-2.1x faster forward passes on the 2-core machine). TTA averages
    probabilities over the views of :mod:`unet.tta`.
    """

    def __init__(self, model: torch.nn.Module, cfg: InferConfig, n_classes: int,
                 trained_membrane_class: int | None = None,
                 training_data: dict[str, Any] | None = None) -> None:
        self.device = resolve_device(cfg.device)
        self.cuda = self.device.type == "cuda"
        self.precision = effective_precision(cfg, self.device)
        self.tta, self.n_classes = cfg.tta, n_classes
        # The configured class, else the one the checkpoint records, else training's convention.
        self.membrane_class = membrane_channel(
            n_classes, cfg.membrane_class if cfg.membrane_class is not None else trained_membrane_class)
        self.training_data = training_data or {}  # what the checkpoint says it was trained on
        model = model.to(self.device).eval()
        self.channels_last = cfg.channels_last
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.model: Any = torch.compile(model) if (cfg.compile and self.cuda) else model
        self.fixed_batch = cfg.batch_size_for(self.device.type) if (cfg.compile and self.cuda) else None
        model_config = getattr(model, "config", None)
        # A valid-padding network's config (its tiles are padded to fit it, see membrane), else None.
        valid = isinstance(model_config, UNetConfig) and model_config.padding == "valid"
        self.valid: UNetConfig | None = model_config if valid else None
        self.model_config = model_config if isinstance(model_config, UNetConfig) else None

    def host_bytes_per_tile(self, tile: tuple[int, int]) -> int | None:
        """Host memory one (y, x) tile's forward pass takes on the CPU, estimated: the engine fits its
        tiles per pass to the memory available (:class:`unet.tiling.BlockPredictor`), because a pass
        too big is killed by the kernel without a word. None on a GPU or for other models."""
        if self.cuda or self.model_config is None:
            return None
        padded = [n + sum(fit_padding(n, self.valid)[:2]) if self.valid else n for n in tile]
        return CPU_BYTES_PER_CHANNEL_PIXEL * self.model_config.base_channels * padded[0] * padded[1]

    def membrane(self, x: torch.Tensor) -> torch.Tensor:
        """Membrane probability (B, 1, H, W) float32 of inputs already scaled to [0, 1].

        A valid-padding U-Net (the paper's) returns less than it is given, so its tiles are first
        mirror-padded by the network's margin (and up to a size it accepts) and the output cut back
        to the tile: the tile's border pixels see mirrored context, but blockwise inference keeps
        only pixels with at least ``min(halo, overlap / 2)`` of real context, which covers the margin
        (checked by :func:`check_fits_model`), so what is written is the network on real data."""
        h, w = x.shape[-2:]
        if self.valid is not None:
            (by, ay, _), (bx, ax, _) = fit_padding(h, self.valid), fit_padding(w, self.valid)
            x = torch.nn.functional.pad(x, (bx, ax, by, ay), mode="reflect")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        prob = membrane_probability(self.model(x), self.membrane_class)
        return prob[..., :h, :w] if self.valid is not None else prob

    @torch.inference_mode()
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.to(self.device, torch.float32, non_blocking=True) * INPUT_SCALE
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
            return tta_average(self.membrane, x, self.tta)


def check_fits_model(cfg: InferConfig, model_config: Any) -> None:
    """ValueError naming the problem when tile, halo or classes do not fit the model."""
    if getattr(model_config, "padding", "same") == "valid":
        margin = fit_padding(max(cfg.tile), model_config)[0]  # context the network consumes per side
        context = cfg.context_px()
        if context < margin or min(cfg.tile) <= 2 * margin:  # tiles mostly context otherwise
            raise ValueError(f"a valid-padding U-Net of depth {model_config.depth} consumes {margin} px of "
                             f"context on each side: tile {cfg.tile} must be over twice that and "
                             f"min(halo, overlap / 2) at least that (it is {context} px)")
    if model_config.in_channels != 1:
        raise ValueError(f"inference reads grey-level volumes (1 channel); the model expects "
                         f"{model_config.in_channels} input channels")
    div = model_config.divisor
    if cfg.tile[0] % div or cfg.tile[1] % div:
        raise ValueError(f"tile {cfg.tile} must be a multiple of {div} (2**(depth-1)) for a depth-"
                         f"{model_config.depth} U-Net")
    if cfg.halo[0] != 0:
        raise ValueError(f"halo z must be 0 for the 2-D U-Net (it sees one slice), got halo {cfg.halo}")
    mc = cfg.membrane_class
    if model_config.n_classes > 1 and mc is not None and mc >= model_config.n_classes:
        raise ValueError(f"membrane_class {mc} does not exist in a model with "
                         f"{model_config.n_classes} classes")


def load_predictor(checkpoint: str, cfg: InferConfig) -> ModelPredictor:
    """Load a checkpoint and wrap it (the factory Dask workers call; see :class:`unet.inference.InferJob`).
    The membrane channel is ``cfg.membrane_class``, else the one the checkpoint records."""
    from unet.checkpoint import (
        load_checkpoint,
        model_from_payload,
        recorded_membrane_class,
        recorded_training_data,
    )

    payload = load_checkpoint(checkpoint, map_location="cpu")
    model, mcfg = model_from_payload(payload, checkpoint)
    check_fits_model(cfg, mcfg)
    return ModelPredictor(model.eval(), cfg, mcfg.n_classes, recorded_membrane_class(payload),
                          recorded_training_data(payload))


_PREDICTORS: dict[Any, Any] = {}
_PREDICTORS_LOCK = threading.Lock()


def cached_predictor(factory: Callable[[], Any]) -> Any:
    """The predictor ``factory`` builds, built once per process (the last factory's is kept).

    Dask workers run many groups of one run and must not reload (and recompile) the model for
    each; a factory is identified by its pickle, so equal factories share one predictor.
    """
    try:
        key: Any = pickle.dumps(factory)
    except (pickle.PicklingError, AttributeError, TypeError):
        key = ("unpicklable", id(factory))  # an in-process factory (closure): identity is enough
    with _PREDICTORS_LOCK:
        if key not in _PREDICTORS:
            _PREDICTORS.clear()
            _PREDICTORS[key] = factory()
        return _PREDICTORS[key]


def release_predictors() -> None:
    """Forget this process's cached predictor, so its model's memory can be freed."""
    with _PREDICTORS_LOCK:
        _PREDICTORS.clear()
