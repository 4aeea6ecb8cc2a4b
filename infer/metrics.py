"""Quality and statistics for the A/B runner: LPIPS (honestly labelled), PSNR, mean and confidence interval.

LPIPS is only the published metric when its AlexNet backbone carries the ImageNet weights. Those
come from torchvision's cache (``$TORCH_HOME/hub/checkpoints``); nothing here ever downloads. When
the file is absent the backbone is random (the linear heads still ship with ``lpips``) and every
score is marked uncalibrated: it still ranks "same vs different" but its scale is not comparable
with published LPIPS numbers.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

UNCALIBRATED = "uncalibrated"
PSNR_CAP = 100.0  # dB; identical clips would be infinite, which JSON cannot hold


def alexnet_weights_path() -> Path:
    """Where torchvision keeps the AlexNet ImageNet weights (respects $TORCH_HOME)."""
    from torchvision.models import AlexNet_Weights

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(AlexNet_Weights.IMAGENET1K_V1.url)


@dataclass
class LpipsMetric:
    """An LPIPS network plus whether its backbone is the real pretrained one."""

    net: Any
    calibrated: bool
    note: str

    @property
    def label(self) -> str:
        """'LPIPS' or 'LPIPS (uncalibrated)': the name every table and plot uses."""
        return "LPIPS" if self.calibrated else f"LPIPS ({UNCALIBRATED})"

    @torch.no_grad()
    def video_distance(self, a: torch.Tensor, b: torch.Tensor) -> float:
        """Mean per-frame LPIPS of two clips (3, T, H, W) in [-1, 1]."""
        a = a.detach().float().cpu().permute(1, 0, 2, 3)
        b = b.detach().float().cpu().permute(1, 0, 2, 3)
        return float(self.net(a.clamp(-1, 1), b.clamp(-1, 1)).mean())


def load_lpips() -> LpipsMetric:
    """The real AlexNet LPIPS when its weights are cached, else the random-backbone one, labelled."""
    import lpips

    weights = alexnet_weights_path()
    if weights.is_file():
        try:
            net = lpips.LPIPS(net="alex", verbose=False).eval()
            return LpipsMetric(net, True, f"AlexNet ImageNet weights from {weights}")
        except Exception as exc:  # a corrupt cache file must not sink the run; say why instead
            reason = f"AlexNet weights at {weights} failed to load ({type(exc).__name__}: {exc})"
    else:
        reason = f"AlexNet ImageNet weights not found at {weights} (set TORCH_HOME to a cache holding them)"
    torch.manual_seed(0)  # the random backbone is at least the same random backbone every run
    net = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    return LpipsMetric(net, False, f"{UNCALIBRATED}: random AlexNet backbone; {reason}")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two clips in [-1, 1] (peak-to-peak 2), capped at PSNR_CAP for identical clips."""
    mse = float(((a.detach().float().cpu() - b.detach().float().cpu()) ** 2).mean())
    if mse <= 4.0 * 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return 10.0 * math.log10(4.0 / mse)


def mean_ci(values: list[float], confidence: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (0 for a single value)."""
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return (math.nan, math.nan)
    n = len(finite)
    mean = sum(finite) / n
    if n < 2:
        return (mean, 0.0)
    from scipy import stats

    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (n - 1))
    return (mean, float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n))
