"""FID, as pytorch-fid defines it (docs/evaluation.md §1, §9).

    FID = ‖μ₁ − μ₂‖² + Tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^{1/2})

with μ, Σ the mean and covariance (n − 1 normalisation) of the 2048-d InceptionV3 pool3 features of two image sets.
Each image is decoded to RGB (images.load_image) as its pixels are stored: EXIF orientation is NOT applied, as
pytorch-fid's `Image.open(path).convert("RGB")` does not apply it (the pack's other scorers apply it), scaled to 0..1, resized to 299 × 299 by bilinear interpolation
(half-pixel centres, no antialiasing: `interpolate(..., mode="bilinear", align_corners=False)`, what pytorch-fid does
inside its network) and mapped to [-1, 1] by 2x − 1; features are computed 50 images at a time.

The network is the "FID Inception" pytorch-fid uses, the TensorFlow Inception of 2015-12-05 ported to PyTorch: it
has torchvision's InceptionV3 layout, but
- the average pools in the pool branches of InceptionA (Mixed_5b–d), InceptionC (Mixed_6b–e) and the first
  InceptionE (Mixed_7b) leave the zero padding out of the average (`count_include_pad=False`),
- the last InceptionE (Mixed_7c) max-pools (3 × 3, stride 1, padding 1) in its pool branch,
- fc has 1008 classes, and there is no auxiliary classifier.
Its weights are pytorch-fid's file `pt_inception-2015-12-05-6726825d.pth` (FID_WEIGHTS_FILE), a plain state dict
in torchvision's key layout; the user supplies it (`--fid-weights FILE`, also as .safetensors); nothing is
downloaded. FIDs published with pytorch-fid (the paper's included) are comparable only with these weights.

torchvision's own ImageNet InceptionV3 (`inception_v3_google-0cc3c7bd.pth`) is accepted as a second variant,
"torchvision": plain torchvision blocks with the same input ([-1, 1], 299 px). Its features differ, so its FIDs are
NOT comparable with published ones; every result says which variant made it. The variant is told by the weights
(fc of 1008 classes: pytorch-fid; 1000: torchvision).

The Fréchet distance is computed in float64 without scipy: Tr((Σ₁Σ₂)^{1/2}) is the sum of the square roots of the
eigenvalues of the symmetric positive semi-definite S Σ₂ S, S = Σ₁^{1/2} (Σ₁Σ₂ = S (S Σ₂ S) S⁻¹ has the same
eigenvalues), both from numpy's `eigh`. Eigenvalues below D · ε · the largest one (numpy's matrix_rank tolerance:
rounding noise, as covariances of fewer images than features are singular) count as zero.

torchvision (which comes with ComfyUI) is imported only when a network is built.
"""
from __future__ import annotations

import functools
import hashlib
import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..atomic import atomic_write
from .errors import EvaluationError, MissingDependencyError
from .images import load_image, rgb_array

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_WEIGHTS_FILE}"
TORCHVISION_WEIGHTS_FILE = "inception_v3_google-0cc3c7bd.pth"
PYTORCH_FID, TORCHVISION = "pytorch-fid", "torchvision"
VARIANTS = {PYTORCH_FID: 1008, TORCHVISION: 1000}  # variant: classes of its fc
FID_SIZE = 299
FID_BATCH = 50
FEATURE_DIM = 2048
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors")


# ---- the network ------------------------------------------------------------------------------------------------

def _average_without_padding(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


@functools.cache
def _network_classes() -> dict[str, type]:
    """The network's classes, built on torchvision's InceptionV3 blocks when first needed: torchvision comes with
    ComfyUI but is no dependency of the trainer, and the rest of the evaluation package runs without it."""
    try:
        from torchvision.models import inception
    except ImportError as error:
        raise MissingDependencyError(f"FID needs torchvision (ComfyUI installs it; otherwise `pip install "
                                     f"torchvision` matching your torch): {error}") from None

    class FIDInceptionA(inception.InceptionA):
        """InceptionA whose pool branch averages over the pixels inside the image only."""

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            return [self.branch1x1(x),
                    self.branch5x5_2(self.branch5x5_1(x)),
                    self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                    self.branch_pool(_average_without_padding(x))]

    class FIDInceptionC(inception.InceptionC):
        """InceptionC whose pool branch averages over the pixels inside the image only."""

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            double = self.branch7x7dbl_1(x)
            for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                double = layer(double)
            return [self.branch1x1(x), seven, double, self.branch_pool(_average_without_padding(x))]

    class FIDInceptionE(inception.InceptionE):
        """InceptionE whose pool branch averages without the padding (`pool="average"`, Mixed_7b) or takes the
        3 × 3 maximum (`pool="max"`, Mixed_7c)."""

        def __init__(self, in_channels: int, pool: str = "average"):
            super().__init__(in_channels)
            if pool not in ("average", "max"):
                raise ValueError(f"pool must be 'average' or 'max', got {pool!r}")
            self.pool = pool

        def _forward(self, x: torch.Tensor) -> list[torch.Tensor]:
            three = self.branch3x3_1(x)
            three = torch.cat([self.branch3x3_2a(three), self.branch3x3_2b(three)], 1)
            double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            double = torch.cat([self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double)], 1)
            if self.pool == "max":
                pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
            else:
                pooled = _average_without_padding(x)
            return [self.branch1x1(x), three, double, self.branch_pool(pooled)]

    class FIDInception(inception.Inception3):
        """InceptionV3 of one variant ("pytorch-fid" or "torchvision"); `pool3(x)` gives the 2048-d features of
        images x already resized to 299 px and scaled to [-1, 1]. Its state dict keys are torchvision's (pytorch-fid's
        file uses the same); there is no auxiliary classifier (the torchvision variant's is not needed)."""

        def __init__(self, variant: str = PYTORCH_FID):
            if variant not in VARIANTS:
                raise EvaluationError(f"FID Inception variant {variant!r} is unknown; allowed: {', '.join(VARIANTS)}")
            fid = variant == PYTORCH_FID
            blocks = [inception.BasicConv2d, FIDInceptionA if fid else inception.InceptionA, inception.InceptionB,
                      FIDInceptionC if fid else inception.InceptionC, inception.InceptionD,
                      FIDInceptionE if fid else inception.InceptionE, inception.InceptionAux]
            super().__init__(num_classes=VARIANTS[variant], aux_logits=False, transform_input=False,
                             inception_blocks=blocks, init_weights=False)
            if fid:
                self.Mixed_7c = FIDInceptionE(2048, pool="max")
            self.variant = variant

        def pool3(self, x: torch.Tensor) -> torch.Tensor:
            for layer in (self.Conv2d_1a_3x3, self.Conv2d_2a_3x3, self.Conv2d_2b_3x3, self.maxpool1,
                          self.Conv2d_3b_1x1, self.Conv2d_4a_3x3, self.maxpool2, self.Mixed_5b, self.Mixed_5c,
                          self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e,
                          self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
                x = layer(x)
            return torch.flatten(self.avgpool(x), 1)

    return {cls.__name__: cls for cls in (FIDInceptionA, FIDInceptionC, FIDInceptionE, FIDInception)}


def __getattr__(name: str) -> type:
    # FIDInception, FIDInceptionA, FIDInceptionC, FIDInceptionE: importing torchvision only when asked for
    if name in ("FIDInception", "FIDInceptionA", "FIDInceptionC", "FIDInceptionE"):
        return _network_classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_fid_inception(variant: str = PYTORCH_FID) -> torch.nn.Module:
    """An FIDInception of `variant` with untrained weights (load_fid_inception reads the real ones)."""
    return _network_classes()["FIDInception"](variant)


# ---- weights ----------------------------------------------------------------------------------------------------

def _missing_weights_message(path: object) -> str:
    return (f"--fid-weights {path}: no such file. FID needs pytorch-fid's Inception weights {FID_WEIGHTS_FILE} "
            f"(published with pytorch-fid: {FID_WEIGHTS_URL}); download it yourself, put it anywhere (ComfyUI: "
            f"models/psa/fid/ is a good place) and pass it with --fid-weights FILE. Nothing is downloaded.")


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() not in WEIGHT_SUFFIXES:
        raise EvaluationError(f"--fid-weights {path}: must end in {', '.join(WEIGHT_SUFFIXES)} (the state dict "
                              f"{FID_WEIGHTS_FILE}, or a .safetensors copy of it)")
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load and safetensors raise many kinds for a bad file
        raise EvaluationError(f"--fid-weights {path}: cannot be read as a state dict "
                              f"({str(error)[:300] or type(error).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise EvaluationError(f"--fid-weights {path}: not a plain state dict (name → tensor)")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _detect_variant(state: dict[str, torch.Tensor], path: Path) -> str:
    fc = state.get("fc.weight")
    classes = None if fc is None or fc.ndim != 2 else int(fc.shape[0])
    for variant, count in VARIANTS.items():
        if classes == count:
            return variant
    raise EvaluationError(f"--fid-weights {path}: not an InceptionV3 state dict of a known variant (fc.weight "
                          f"{None if fc is None else tuple(fc.shape)}; pytorch-fid's {FID_WEIGHTS_FILE} has 1008 "
                          f"classes, torchvision's {TORCHVISION_WEIGHTS_FILE} 1000)")


def load_fid_inception(path: str | os.PathLike, variant: str | None = None) -> torch.nn.Module:
    """The FID Inception with the weights of `path` (a .pth state dict read with weights_only=True, or
    .safetensors), on the CPU in float32. `variant` None takes it from the weights; a given one must match them."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(_missing_weights_message(path))
    state = _read_state_dict(path)
    found = _detect_variant(state, path)
    if variant is not None and variant != found:
        raise EvaluationError(f"--fid-weights {path}: holds the {found} Inception, not the {variant} one")
    network = build_fid_inception(found)
    expected = network.state_dict()
    loaded: dict[str, torch.Tensor] = {}
    for key, target in expected.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):  # a training counter, absent from older files; unused in eval
                loaded[key] = target
                continue
            raise EvaluationError(f"--fid-weights {path}: {key} is missing; not a complete InceptionV3 state dict")
        if tuple(state[key].shape) != tuple(target.shape):
            raise EvaluationError(f"--fid-weights {path}: {key} has shape {tuple(state[key].shape)}, the "
                                  f"{found} Inception needs {tuple(target.shape)}")
        loaded[key] = state[key]
    unused = ("AuxLogits.",) if found == TORCHVISION else ()  # torchvision's auxiliary classifier: not needed
    extra = [key for key in state if key not in expected and not (unused and key.startswith(unused))]
    if extra:
        raise EvaluationError(f"--fid-weights {path}: unexpected keys {', '.join(sorted(extra)[:5])}; not an "
                              f"InceptionV3 state dict in torchvision's layout")
    network.load_state_dict(loaded)
    return network.eval()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- features ---------------------------------------------------------------------------------------------------

def fid_preprocess(image: Image.Image, size: int = FID_SIZE) -> torch.Tensor:
    """One RGB image as the FID Inception takes it: 0..1, bilinear resize to `size`² (align_corners=False, no
    antialiasing), 2x − 1. Returns float32 [3, size, size]."""
    pixels = torch.from_numpy(rgb_array(image if image.mode == "RGB" else image.convert("RGB")).copy())
    pixels = pixels.permute(2, 0, 1)[None].to(torch.float32) / 255.0
    resized = F.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    return (2.0 * resized - 1.0)[0]


class FIDFeatureExtractor:
    """2048-d pool3 features of images, by an FIDInception."""

    def __init__(self, network: torch.nn.Module, name: str = "inception", sha256: str | None = None):
        self.network, self.name, self.sha256 = network.eval(), name, sha256
        self.variant = network.variant
        parameter = next(network.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype

    @classmethod
    def from_file(cls, path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  variant: str | None = None) -> FIDFeatureExtractor:
        """From pytorch-fid's weight file (or torchvision's, as the "torchvision" variant); nothing is downloaded."""
        path = Path(path)
        network = load_fid_inception(path, variant).to(device, dtype)
        return cls(network, path.name, _sha256(path))

    @torch.inference_mode()
    def __call__(self, images: Sequence[object]) -> torch.Tensor:
        """[N, 2048] features of one batch of images (paths, PIL images, arrays: images.load_image)."""
        pixels = torch.stack([fid_preprocess(load_image(image, orient=False)) for image in images])
        return self.network.pool3(pixels.to(self.device, self.dtype))

    def features(self, images: Sequence[object], batch_size: int = FID_BATCH) -> np.ndarray:
        """[N, 2048] float64 features of `images`, `batch_size` at a time (pytorch-fid's default 50)."""
        if batch_size < 1:
            raise EvaluationError(f"the FID batch size must be at least 1, got {batch_size}")
        images = list(images)
        rows = [self(images[start:start + batch_size]).to("cpu", torch.float64).numpy()
                for start in range(0, len(images), batch_size)]
        return np.concatenate(rows) if rows else np.zeros((0, FEATURE_DIM))

    def settings(self) -> dict:
        return {"fid_weights": self.name, "fid_weights_sha256": self.sha256, "fid_variant": self.variant,
                "comparable_with_published_fid": self.variant == PYTORCH_FID, "image_size": FID_SIZE,
                "device": str(self.device), "dtype": str(self.dtype).replace("torch.", "")}


# ---- statistics and the distance --------------------------------------------------------------------------------

def _finite_float64(values: object, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.dtype.kind not in "fiu":
        raise EvaluationError(f"{what} must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise EvaluationError(f"{what} holds NaN or infinite values")
    return array


def statistics_from_features(features: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of [N, D] features in float64, Σ with n − 1 normalisation (numpy's cov, as pytorch-fid). N ≥ 2."""
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().double().numpy()
    values = _finite_float64(features, "the FID features")
    if values.ndim != 2 or values.shape[0] < 2:
        raise EvaluationError(f"FID statistics need features [N, D] of at least 2 images, got shape {values.shape}")
    return values.mean(axis=0), np.cov(values, rowvar=False)


def compute_statistics(images: Sequence[object], extractor: FIDFeatureExtractor,
                       batch_size: int = FID_BATCH) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) of the pool3 features of `images` (at least 2), float64."""
    return statistics_from_features(extractor.features(images, batch_size))


def _check_statistics(mu: object, sigma: object, which: str) -> tuple[np.ndarray, np.ndarray]:
    mu = _finite_float64(mu, f"μ{which}")
    sigma = _finite_float64(sigma, f"Σ{which}")
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise EvaluationError(f"FID statistics need μ of shape (D,) and Σ of shape (D, D); got {mu.shape} and "
                              f"{sigma.shape}")
    return mu, sigma


def _psd_eigen(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (rounding noise below D · ε · the largest set to 0) and eigenvectors of a symmetric PSD matrix."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
    floor = matrix.shape[0] * np.finfo(np.float64).eps * max(float(values.max(initial=0.0)), 0.0)
    return np.where(values > floor, values, 0.0), vectors


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """Tr((Σ₁Σ₂)^{1/2}) for symmetric positive semi-definite Σ₁, Σ₂ (float64)."""
    values, vectors = _psd_eigen(sigma1)
    root = (vectors * np.sqrt(values)) @ vectors.T
    product, _ = _psd_eigen(root @ sigma2 @ root)
    return float(np.sqrt(product).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """‖μ₁ − μ₂‖² + Tr(Σ₁) + Tr(Σ₂) − 2 Tr((Σ₁Σ₂)^{1/2}), in float64. Non-finite or mismatched inputs are refused."""
    mu1, sigma1 = _check_statistics(mu1, sigma1, "₁")
    mu2, sigma2 = _check_statistics(mu2, sigma2, "₂")
    if mu1.shape != mu2.shape:
        raise EvaluationError(f"the two FID statistics have different dimensions ({mu1.shape[0]} and "
                              f"{mu2.shape[0]}); both must come from the same Inception features")
    difference = mu1 - mu2
    return float(difference @ difference + np.trace(sigma1) + np.trace(sigma2)
                 - 2.0 * trace_sqrt_product(sigma1, sigma2))


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray) -> Path:
    """Write (μ, Σ) as an .npz with arrays `mu` and `sigma` (float64; pytorch-fid reads the same keys), atomically."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise EvaluationError(f"FID statistics are written as .npz; {path.name} must end in .npz")
    mu, sigma = _check_statistics(mu, sigma, "")
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma)
    return atomic_write(path, lambda temporary: temporary.write_bytes(buffer.getvalue()))


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(μ, Σ) from an .npz with numeric arrays `mu` and `sigma` (as pytorch-fid and save_statistics write them), read
    with allow_pickle=False: an .npz holding pickled objects is refused, never unpickled."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"FID statistics {path}: no such file (an .npz with arrays mu and sigma)")
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise EvaluationError(f"FID statistics {path}: must be an .npz with arrays mu and sigma, not one array")
        with data:
            if not {"mu", "sigma"} <= set(data.files):
                raise EvaluationError(f"FID statistics {path}: must be an .npz with arrays mu and sigma; it holds "
                                      f"{', '.join(sorted(data.files)[:5]) or 'nothing'}")
            mu, sigma = data["mu"], data["sigma"]
    except EvaluationError:
        raise
    except ValueError as error:
        if "pickle" in str(error).lower() or "object arrays" in str(error).lower():
            raise EvaluationError(f"FID statistics {path}: refused, it holds pickled objects (only numeric arrays mu "
                                  f"and sigma are read)") from None
        raise EvaluationError(f"FID statistics {path}: cannot be read ({str(error)[:200]})") from None
    except (OSError, EOFError, KeyError) as error:
        raise EvaluationError(f"FID statistics {path}: cannot be read ({str(error)[:200]})") from None
    return _check_statistics(mu, sigma, f" of {path.name}")
