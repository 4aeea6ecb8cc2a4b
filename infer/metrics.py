"""Video quality metrics, each labelled with whether its scale is calibrated, and statistics.

Calibrated (shipped weights, offline): VMAF (vmaf-torch, Netflix's vmaf_v0.6.1 model embedded),
ST-LPIPS (stlpips-pytorch, shift-tolerant AlexNet + BAPPS-trained linear heads), PSNR and SSIM
(torchmetrics; defined by formula). `VideoQuality` scores a clip against a reference with all of
them; `METRICS` names each with its label and direction.

LPIPS is only the published metric when its AlexNet backbone carries the ImageNet weights. Those
come from torchvision's cache (``$TORCH_HOME/hub/checkpoints``); nothing here ever downloads. When
the file is absent the backbone is random (the linear heads still ship with ``lpips``) and every
score is marked uncalibrated: it still ranks "same vs different" but its scale is not comparable
with published LPIPS numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import sys
import types
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
    """PSNR in dB of two clips in [-1, 1] (peak-to-peak 2; torchmetrics over every sample), capped at
    PSNR_CAP for identical clips (infinite otherwise, which JSON cannot hold)."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if float(((a - b) ** 2).mean()) <= 4.0 * 10 ** (-PSNR_CAP / 10):
        return PSNR_CAP
    return min(PSNR_CAP, float(peak_signal_noise_ratio(a, b, data_range=2.0)))


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


# ---------------------------------------------------------------- calibrated video metrics
ST_LPIPS_LABEL = "ST-LPIPS (alex, shift-tolerant, calibrated)"


@dataclass(frozen=True)
class MetricSpec:
    """How a metric is named in every table, plot and W&B key, and which way is better."""

    key: str
    label: str
    higher_is_better: bool
    calibrated: bool
    note: str


def luma_studio(video: torch.Tensor) -> torch.Tensor:
    """(3, T, H, W) RGB in [-1, 1] -> (T, 1, H, W) BT.601 limited-range luma (16..235): the Y plane
    ffmpeg/libx264 write for yuv420p from RGB, which is what libvmaf reads from the project's mp4s."""
    rgb = (video.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5
    y = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (16.0 + y * (219.0 / 255.0)).unsqueeze(1)


def frame_subsample(num_frames: int, count: int) -> list[int]:
    """`count` evenly spaced frame indices, first and last included (all frames when count <= 0 or
    count >= num_frames): where the slow ST-LPIPS is scored."""
    if count <= 0 or count >= num_frames:
        return list(range(num_frames))
    if count == 1:
        return [num_frames // 2]
    return sorted({round(i * (num_frames - 1) / (count - 1)) for i in range(count)})


class VmafMetric:
    """VMAF (Netflix vmaf_v0.6.1, the SVM model embedded in vmaf-torch): per-frame scores on luma,
    motion feature from the reference, clipped to [0, 100] as libvmaf does; the clip's score is the
    mean over frames (libvmaf's default pooling)."""

    MIN_SIZE = 32  # four dyadic scales of ADM/VIF need at least this many pixels per side

    def __init__(self) -> None:
        from vmaf_torch import VMAF

        self.net = VMAF(temporal_pooling=False, enable_motion=True, clip_score=True).eval()

    @torch.no_grad()
    def motion(self, ref_luma: torch.Tensor) -> torch.Tensor:
        """The reference-only motion2 feature (T, 1): computed once per reference clip."""
        return self.net.compute_motion2(ref_luma)

    @torch.no_grad()
    def per_frame(
        self, ref_luma: torch.Tensor, dist_luma: torch.Tensor, motion: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(T,) VMAF of each frame of two (T, 1, H, W) luma clips (see `luma_studio`)."""
        if min(ref_luma.shape[-2:]) < self.MIN_SIZE:
            raise ValueError(
                f"VMAF needs frames of at least {self.MIN_SIZE}x{self.MIN_SIZE}, got {tuple(ref_luma.shape[-2:])}"
            )
        motion = self.motion(ref_luma) if motion is None else motion
        adm = self.net.compute_adm_score(ref_luma, dist_luma)
        vif = self.net.compute_vif_features(ref_luma, dist_luma)
        return self.net.predict(adm, motion, vif).flatten()

    def score(self, ref: torch.Tensor, dist: torch.Tensor) -> float:
        """Mean VMAF of clip `dist` against `ref`, both (3, T, H, W) in [-1, 1]."""
        return float(self.per_frame(luma_studio(ref), luma_studio(dist)).mean())


@contextlib.contextmanager
def _ipython_stub() -> Any:
    """stlpips_pytorch imports `from IPython import embed` at module level and never calls it. When
    IPython is not installed, a stub module stands in during that import only and is removed from
    sys.modules afterwards, so libraries that look for a live IPython (tqdm, wandb, matplotlib)
    never see it."""
    if importlib.util.find_spec("IPython") is not None:
        yield
        return
    stub = types.ModuleType("IPython")

    def embed(*_: Any, **__: Any) -> None:
        raise RuntimeError("IPython is not installed (stub used while importing stlpips_pytorch)")

    stub.embed = embed  # type: ignore[attr-defined]
    sys.modules["IPython"] = stub
    try:
        yield
    finally:
        if sys.modules.get("IPython") is stub:
            del sys.modules["IPython"]


def st_lpips_weights() -> Path:
    """The calibrated shift-tolerant AlexNet + linear heads that stlpips-pytorch ships."""
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or spec.origin is None:
        raise ImportError("stlpips-pytorch is not installed (pip install stlpips-pytorch==0.0.2)")
    return Path(spec.origin).parent / "weights" / "vST0.0" / "alex_shift_tolerant.pth"


class StLpipsMetric:
    """ST-LPIPS: LPIPS on an anti-aliased, shift-tolerant AlexNet, backbone and linear heads trained
    on BAPPS (Ghildyal & Liu, ECCV 2022). Weights from the package (torch.load weights_only, every
    key matched, so a partial load cannot pass as calibrated). Features of a reference frame are
    computed once and reused for every clip scored against it."""

    label = ST_LPIPS_LABEL

    def __init__(self) -> None:
        with _ipython_stub():
            from stlpips_pytorch import stlpips
        self._utils = stlpips.utils
        self._spatial_average = stlpips.spatial_average
        net = stlpips.LPIPS(net="alex", variant="shift_tolerant", pretrained=False, verbose=False)
        state = torch.load(st_lpips_weights(), map_location="cpu", weights_only=True)
        loaded = net.load_state_dict(state, strict=False)
        # `lins.N` and `linN` are the same modules registered twice; the file names them `linN`
        missing = [
            k for k in loaded.missing_keys if not (k.startswith("lins.") and k.replace("lins.", "lin", 1) in state)
        ]
        if missing or loaded.unexpected_keys:
            raise RuntimeError(
                f"ST-LPIPS weights at {st_lpips_weights()} do not match the network "
                f"(missing {missing[:3]}, unexpected {loaded.unexpected_keys[:3]})"
            )
        self.net = net.eval().requires_grad_(False)

    @torch.no_grad()
    def features(self, frames: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of (N, 3, H, W) frames in [-1, 1]."""
        outs = self.net.net.forward(self.net.scaling_layer(frames.float().clamp(-1, 1)))
        return [self._utils.normalize_tensor(outs[k]) for k in range(self.net.L)]

    @torch.no_grad()
    def from_features(self, ref: list[torch.Tensor], dist: list[torch.Tensor]) -> torch.Tensor:
        """(N,) distances between two feature lists (what `LPIPS.forward` computes)."""
        total = 0
        for lin, a, b in zip(self.net.lins, ref, dist, strict=True):
            total = total + self._spatial_average(lin((a - b) ** 2), keepdim=True)
        return total.flatten()  # type: ignore[union-attr]

    def score(self, ref: torch.Tensor, dist: torch.Tensor, frames: list[int] | None = None) -> float:
        """Mean ST-LPIPS over `frames` (default all) of two (3, T, H, W) clips in [-1, 1]."""
        idx = frames if frames is not None else list(range(ref.shape[1]))
        a = ref.detach().float().cpu()[:, idx].permute(1, 0, 2, 3)
        b = dist.detach().float().cpu()[:, idx].permute(1, 0, 2, 3)
        return float(self.from_features(self.features(a), self.features(b)).mean())


def ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean SSIM (torchmetrics, Gaussian 11x11, sigma 1.5) over the frames of two (3, T, H, W) clips in [-1, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    x = a.detach().float().cpu().permute(1, 0, 2, 3)
    y = b.detach().float().cpu().permute(1, 0, 2, 3)
    return float(structural_similarity_index_measure(x, y, data_range=2.0))


def metric_specs(lpips_calibrated: bool | None = None, lpips_note: str = "") -> dict[str, dict[str, Any]]:
    """Every metric a report carries: label (the name in tables, plots and W&B), `calibrated`,
    direction and provenance; LPIPS only when `lpips_calibrated` is given. Verdicts and plots use
    only the calibrated ones."""
    specs = {
        "vmaf": MetricSpec(
            "vmaf",
            "VMAF (v0.6.1)",
            True,
            True,
            "vmaf-torch 1.1.0 with Netflix's vmaf_v0.6.1 model embedded; BT.601 limited-range luma; "
            "per-frame scores clipped to [0, 100], mean over frames",
        ),
        "st_lpips": MetricSpec(
            "st_lpips",
            ST_LPIPS_LABEL,
            False,
            True,
            "stlpips-pytorch 0.0.2, alex_shift_tolerant.pth (backbone and linear heads trained on "
            "BAPPS), mean over the scored frames",
        ),
        "psnr": MetricSpec(
            "psnr", "PSNR (dB)", True, True, f"torchmetrics, RGB in [-1, 1], capped at {PSNR_CAP:.0f} dB"
        ),
        "ssim": MetricSpec("ssim", "SSIM", True, True, "torchmetrics, Gaussian 11x11 sigma 1.5, RGB, mean over frames"),
    }
    out = {k: dataclasses.asdict(v) for k, v in specs.items()}
    if lpips_calibrated is not None:
        label = "LPIPS" if lpips_calibrated else f"LPIPS ({UNCALIBRATED})"
        out["lpips"] = dataclasses.asdict(MetricSpec("lpips", label, False, lpips_calibrated, lpips_note))
    return out


class ClipScorer:
    """Scores clips against one reference with VMAF, ST-LPIPS, PSNR and SSIM; the reference's share
    (luma, VMAF motion, ST-LPIPS features of the scored frames) is computed once.

    ST-LPIPS runs on `st_lpips_frames` (see `frame_subsample`; it is ~4x slower than VMAF on CPU),
    VMAF, PSNR and SSIM on every frame. A metric that cannot run (frames too small for VMAF, a
    metric not loaded, SSIM switched off with `with_ssim=False`: torchmetrics' SSIM takes ~12 s of
    CPU for 17 frames at 352x640, twice VMAF) gives None, never a made-up number."""

    def __init__(
        self,
        reference: torch.Tensor,
        vmaf: VmafMetric | None,
        st_lpips: StLpipsMetric | None,
        st_lpips_frames: int = 0,
        with_ssim: bool = True,
    ) -> None:
        self.ref = reference.detach().float().cpu()
        self.with_ssim = with_ssim
        self.vmaf, self.st_lpips = vmaf, st_lpips
        self.frames = frame_subsample(self.ref.shape[1], st_lpips_frames)
        self._luma = luma_studio(self.ref)
        self._vmaf_ok = vmaf is not None and min(self.ref.shape[-2:]) >= VmafMetric.MIN_SIZE
        self._motion = vmaf.motion(self._luma) if self._vmaf_ok else None  # type: ignore[union-attr]
        self._features = st_lpips.features(self.ref[:, self.frames].permute(1, 0, 2, 3)) if st_lpips else None

    def score(self, clip: torch.Tensor) -> dict[str, float | None]:
        """{vmaf, st_lpips, psnr, ssim} of `clip` (3, T, H, W) in [-1, 1] against the reference."""
        clip = clip.detach().float().cpu()
        if clip.shape != self.ref.shape:
            raise ValueError(
                f"clip of shape {tuple(clip.shape)} cannot be scored against a reference of {tuple(self.ref.shape)}"
            )
        out: dict[str, float | None] = {
            "vmaf": None,
            "st_lpips": None,
            "psnr": psnr(clip, self.ref),
            "ssim": ssim(clip, self.ref) if self.with_ssim else None,
        }
        if self._vmaf_ok:
            out["vmaf"] = float(self.vmaf.per_frame(self._luma, luma_studio(clip), self._motion).mean())  # type: ignore[union-attr]
        if self.st_lpips is not None:
            feats = self.st_lpips.features(clip[:, self.frames].permute(1, 0, 2, 3))
            out["st_lpips"] = float(self.st_lpips.from_features(self._features, feats).mean())  # type: ignore[arg-type]
        return out


QUALITY_KEYS = ("vmaf", "st_lpips", "psnr", "ssim")


@dataclass
class VideoMetrics:
    """The calibrated metrics of the A/B: each arm against the reference clip, and CAT against uniform
    (uniform as the reference: how far CAT moves the output)."""

    vmaf: VmafMetric | None
    st_lpips: StLpipsMetric | None
    st_lpips_frames: int = 3

    @classmethod
    def load(cls, st_lpips_frames: int = 3) -> VideoMetrics:
        return cls(VmafMetric(), StLpipsMetric(), st_lpips_frames)

    def scorer(self, reference: torch.Tensor) -> ClipScorer:
        return ClipScorer(reference, self.vmaf, self.st_lpips, self.st_lpips_frames)

    def compare_arms(self, reference: torch.Tensor, videos: dict[str, torch.Tensor], baseline: str) -> dict[str, Any]:
        """{"vs_reference": {arm: scores}, "<arm>_vs_<baseline>": scores for every other arm}, clips (3, T, H, W)."""
        ref, base = self.scorer(reference), self.scorer(videos[baseline])
        out: dict[str, Any] = {"vs_reference": {name: ref.score(video) for name, video in videos.items()}}
        out.update({f"{name}_vs_{baseline}": base.score(video) for name, video in videos.items() if name != baseline})
        return out
