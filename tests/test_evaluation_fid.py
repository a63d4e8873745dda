"""FID (psa_core/evaluation/fid.py): the Fréchet distance against scipy's matrix square root and closed forms, the
FID Inception end to end on random weights saved as pytorch-fid's and torchvision's state dicts, against a
reference written here (torchvision's plain InceptionV3 with the FID pool branches computed independently), and
the statistics files."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numerics import assert_within_float32_noise
from PIL import Image
from safetensors.torch import save_file
from torchvision.models.inception import Inception3, InceptionA, InceptionC, InceptionE

from psa_core.evaluation import EvaluationError
from psa_core.evaluation.fid import (
    FIDFeatureExtractor,
    FIDInception,
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE,
    compute_statistics,
    fid_preprocess,
    frechet_distance,
    load_statistics,
    save_statistics,
    statistics_from_features,
)

EPS64 = np.finfo(np.float64).eps
FEATURE_DIM_EXPECTED = 2048  # pool3 of InceptionV3


def random_spd(rng: np.random.Generator, dim: int, low: float = 0.1, high: float = 10.0) -> np.ndarray:
    """Q diag(λ) Qᵀ with λ in [low, high]."""
    q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (q * rng.uniform(low, high, dim)) @ q.T


# ---- the distance -----------------------------------------------------------------------------------------------
#
# Bounds. numpy's eigh (LAPACK syevd) is backward stable: each computed eigenvalue of a symmetric A is within
# p·n·ε·‖A‖₂ of the exact one, p a modest constant (≤ 10 in practice). Here n ≤ 64, ‖Σ‖₂ ≤ 10, ‖SΣ₂S‖₂ ≤ 100, and
# every eigenvalue of SΣ₂S is ≥ λmin(Σ₁)·λmin(Σ₂) = 0.01, so each √λ errs by at most
# p·n·ε·100 / (2·√0.01) ≈ 10·64·2.2e-16·500 ≈ 7e-11, and their sum over n terms by 5e-9; the traces and ‖Δμ‖² add
# only n·ε·(their size). 1e-7 leaves a factor 20 for p and the products S·Σ₂·S; a missing factor 2, a swapped
# covariance or a transposed product changes the distance by more than 1e-2.
DISTANCE_BOUND = 1e-7


def closed_form_commuting(mu1, a, mu2, b) -> float:
    """Σ₁ = Q diag(a) Qᵀ, Σ₂ = Q diag(b) Qᵀ commute: (Σ₁Σ₂)^{1/2} = Q diag(√(ab)) Qᵀ, so
    FID = ‖Δμ‖² + Σ (√a − √b)²."""
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_frechet_distance_of_diagonal_and_commuting_covariances_is_the_closed_form():
    rng = np.random.default_rng(0)
    for dim in (1, 5, 64):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        a, b = rng.uniform(0.1, 10, dim), rng.uniform(0.1, 10, dim)
        assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
            closed_form_commuting(mu1, a, mu2, b), rel=0, abs=DISTANCE_BOUND)
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        s1, s2 = (q * a) @ q.T, (q * b) @ q.T
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed_form_commuting(mu1, a, mu2, b), rel=0,
                                                                   abs=DISTANCE_BOUND)


def test_frechet_distance_matches_scipys_matrix_square_root():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(1)
    for dim in (2, 16, 64):
        mu1, mu2 = rng.standard_normal(dim), rng.standard_normal(dim)
        s1, s2 = random_spd(rng, dim), random_spd(rng, dim)
        root = linalg.sqrtm(s1 @ s2)  # non-symmetric product: scipy's Schur method, independent of eigh
        expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)
        assert np.abs(np.trace(root).imag) < 1e-9
        # scipy's Schur-based sqrtm of the product Σ₁Σ₂ (‖·‖ ≤ 100, condition ≤ 1e4) errs in its trace by about
        # condition·n·ε·‖Σ₁Σ₂‖ ≈ 1e4·64·2.2e-16·100 ≈ 1.4e-8: within the same bound as ours.
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=0, abs=DISTANCE_BOUND)


def test_identical_statistics_give_zero_and_a_shift_gives_its_squared_length():
    rng = np.random.default_rng(2)
    dim = 64
    sigma, mu = random_spd(rng, dim), rng.standard_normal(dim)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= DISTANCE_BOUND
    shift = rng.standard_normal(dim)
    assert frechet_distance(mu, sigma, mu + shift, sigma) == pytest.approx(float(shift @ shift), rel=0,
                                                                          abs=DISTANCE_BOUND)
    # Statistics of fewer samples than dimensions (singular Σ, as of a small image set): without the floor on
    # rounding-noise eigenvalues each of the 55 zero eigenvalues would add up to √(n·ε)·‖Σ‖ ≈ 1e-7·‖Σ‖. With it,
    # the r = 9 kept eigenvalues λ of SΣS = Σ² are those of Σ squared, each within p·n·ε·λmax² (p ≤ 10 as above),
    # so each √ errs by ≤ p·n·ε·λmax²/(2·λmin): summed, ≤ r·p·n·ε·λmax²/λmin (counting S's own error as much
    # again); the bound allows 10 times that.
    features = rng.standard_normal((10, dim)) * rng.uniform(0.5, 2, dim)
    mu_small, sigma_small = statistics_from_features(features)
    kept = np.linalg.eigvalsh(sigma_small)[-9:]
    bound = 10 * 9 * 10 * dim * EPS64 * kept.max() ** 2 / kept.min()
    assert abs(frechet_distance(mu_small, sigma_small, mu_small, sigma_small)) <= bound


def test_statistics_are_the_mean_and_unbiased_covariance():
    rng = np.random.default_rng(3)
    features = rng.standard_normal((7, 4))
    mu, sigma = statistics_from_features(torch.tensor(features, dtype=torch.float32))
    exact = features.astype(np.float32).astype(np.float64)
    centred = exact - exact.sum(axis=0) / 7
    assert mu.dtype == np.float64 and sigma.shape == (4, 4)
    assert np.allclose(mu, exact.sum(axis=0) / 7, rtol=0, atol=1e-14)
    assert np.allclose(sigma, centred.T @ centred / 6, rtol=0, atol=1e-13)
    with pytest.raises(EvaluationError, match="at least 2 images"):
        statistics_from_features(features[:1])


@pytest.mark.parametrize("bad", ["nan-mu", "inf-sigma", "shape", "dims"])
def test_non_finite_or_mismatched_statistics_are_refused(bad):
    mu, sigma = np.zeros(3), np.eye(3)
    other_mu, other_sigma = mu.copy(), sigma.copy()
    message = "NaN or infinite"
    if bad == "nan-mu":
        other_mu[1] = np.nan
    elif bad == "inf-sigma":
        other_sigma[0, 2] = np.inf
    elif bad == "shape":
        other_sigma, message = np.eye(2), r"shape \(D, D\)"
    else:
        other_mu, other_sigma, message = np.zeros(4), np.eye(4), "different dimensions"
    with pytest.raises(EvaluationError, match=message):
        frechet_distance(mu, sigma, other_mu, other_sigma)
    with pytest.raises(EvaluationError, match="NaN or infinite"):
        statistics_from_features(np.array([[0.0, np.nan], [1.0, 2.0]]))


# ---- statistics files -------------------------------------------------------------------------------------------

def test_statistics_npz_round_trip(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = rng.standard_normal(8), random_spd(rng, 8)
    path = save_statistics(tmp_path / "coco10k.npz", mu, sigma)
    loaded_mu, loaded_sigma = load_statistics(path)
    assert np.array_equal(loaded_mu, mu) and np.array_equal(loaded_sigma, sigma)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["mu", "sigma"]
    np.savez_compressed(tmp_path / "pytorch_fid_style.npz", mu=mu.astype(np.float32), sigma=sigma)
    assert np.array_equal(load_statistics(tmp_path / "pytorch_fid_style.npz")[0], mu.astype(np.float32))
    assert not list(tmp_path.glob(".*partial"))
    with pytest.raises(EvaluationError, match="must end in .npz"):
        save_statistics(tmp_path / "stats.npy", mu, sigma)


class CreatesFile:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickle_bearing_npz_is_refused_and_never_runs(tmp_path):
    target = tmp_path / "created_by_payload"
    payload = np.array([CreatesFile(target), 1.0], dtype=object)
    np.savez(tmp_path / "evil.npz", mu=payload, sigma=np.eye(2))
    with pytest.raises(EvaluationError, match="refused, it holds pickled objects"):
        load_statistics(tmp_path / "evil.npz")
    assert not target.exists()
    with np.load(tmp_path / "evil.npz", allow_pickle=True) as data:  # the same file does run when unpickled
        data["mu"]
    assert target.exists()
    (tmp_path / "plain.pkl.npz").write_bytes(pickle.dumps({"mu": np.zeros(2), "sigma": np.eye(2)}))
    with pytest.raises(EvaluationError, match="refused|cannot be read"):
        load_statistics(tmp_path / "plain.pkl.npz")
    np.savez(tmp_path / "keys.npz", mean=np.zeros(2), cov=np.eye(2))
    with pytest.raises(EvaluationError, match="arrays mu and sigma"):
        load_statistics(tmp_path / "keys.npz")
    np.savez(tmp_path / "nan.npz", mu=np.full(2, np.nan), sigma=np.eye(2))
    with pytest.raises(EvaluationError, match="NaN or infinite"):
        load_statistics(tmp_path / "nan.npz")
    with pytest.raises(EvaluationError, match="no such file"):
        load_statistics(tmp_path / "missing.npz")


# ---- the FID blocks ---------------------------------------------------------------------------------------------

def average_inside_image(x: torch.Tensor) -> torch.Tensor:
    """3 × 3 mean over the neighbours that lie inside the image: a box sum divided by the count of such pixels."""
    ones = torch.ones_like(x[:, :1])
    kernel = torch.ones(1, 1, 3, 3, dtype=x.dtype)
    sums = F.conv2d(x.reshape(-1, 1, *x.shape[2:]), kernel, padding=1).reshape(x.shape)
    counts = F.conv2d(ones, kernel, padding=1)
    return sums / counts


def maximum_of_neighbours(x: torch.Tensor) -> torch.Tensor:
    padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
    return padded.unfold(2, 3, 1).unfold(3, 3, 1).amax(dim=(-1, -2))


class ReferencePoolBranch(torch.nn.Module):
    """A torchvision block whose last (pool) branch is recomputed with `pool` instead of its own avg_pool2d."""

    def __init__(self, block: torch.nn.Module, pool):
        super().__init__()
        self.block, self.pool = block, pool

    def forward(self, x):
        outputs = self.block._forward(x)
        return torch.cat(outputs[:-1] + [self.block.branch_pool(self.pool(x))], 1)


@pytest.mark.parametrize("ours, theirs, channels, size, pool", [
    (lambda: FIDInceptionA(192, pool_features=32), lambda: InceptionA(192, pool_features=32), 192, 35,
     average_inside_image),
    (lambda: FIDInceptionC(768, channels_7x7=128), lambda: InceptionC(768, channels_7x7=128), 768, 17,
     average_inside_image),
    (lambda: FIDInceptionE(1280), lambda: InceptionE(1280), 1280, 8, average_inside_image),
    (lambda: FIDInceptionE(2048, pool="max"), lambda: InceptionE(2048), 2048, 8, maximum_of_neighbours),
], ids=["A", "C", "E-average", "E-max"])
def test_the_fid_blocks_pool_differently_from_torchvisions(ours, theirs, channels, size, pool, one_thread):
    torch.manual_seed(0)
    fid_block, plain = ours().eval(), theirs().eval()
    plain.load_state_dict(fid_block.state_dict())
    x = torch.randn(2, channels, size, size)
    # Mixed inputs: ReLU outputs are ≥ 0 (where max and mean differ most); negative values check the −∞ padding.
    x[0] = x[0].abs()
    reference = ReferencePoolBranch(copy.deepcopy(plain), pool)
    with torch.no_grad():
        got, standard = fid_block(x), plain(x)
        exact = reference.double()(x.double())
        reference_float32 = reference.float()(x)
    assert got.shape == standard.shape == exact.shape
    assert_within_float32_noise(got, exact, reference_float32, "FID block outputs")
    scale = exact.abs().max().item()
    assert (got - standard).abs().max().item() > 1e-2 * scale, "the FID block pools as torchvision's does"


# ---- the network end to end -------------------------------------------------------------------------------------

def calibrated_fid_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random FID Inception weights with batch-norm statistics from one training-mode pass over noise images
    (139 px, the smallest size whose last blocks still see 3 × 3 maps), so activations neither vanish nor explode
    over its 94 layers."""
    torch.manual_seed(seed)
    network = FIDInception("pytorch-fid")
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average: after one pass, the batch's own statistics
    network.train()
    with torch.no_grad():
        network.pool3(torch.rand(6, 3, 139, 139) * 2 - 1)
    return {key: value.clone() for key, value in network.state_dict().items()}


@pytest.fixture(scope="module")
def fid_state() -> dict[str, torch.Tensor]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return calibrated_fid_state()
    finally:
        torch.set_num_threads(threads)


def sample_images() -> list[Image.Image]:
    rng = np.random.default_rng(5)
    images = []
    for width, height in ((299, 299), (512, 512), (200, 320)):
        base = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(base).resize((width, height), Image.BILINEAR), dtype=np.int64)
        noise = rng.integers(-30, 31, size=(height, width, 3))
        images.append(Image.fromarray(np.clip(smooth + noise, 0, 255).astype(np.uint8)))
    return images


def naive_bilinear(pixels: np.ndarray, size: int) -> np.ndarray:
    """H×W×3 → size×size×3 bilinear, half-pixel centres (source x = (i + ½)·in/out − ½, clamped at 0), no
    antialiasing, in float64."""
    def axis(count: int):
        source = np.maximum((np.arange(size) + 0.5) * count / size - 0.5, 0.0)
        low = np.floor(source).astype(int)
        high = np.minimum(low + 1, count - 1)
        return low, high, source - low

    (y0, y1, wy), (x0, x1, wx) = axis(pixels.shape[0]), axis(pixels.shape[1])
    top = pixels[y0][:, x0] * (1 - wx)[None, :, None] + pixels[y0][:, x1] * wx[None, :, None]
    bottom = pixels[y1][:, x0] * (1 - wx)[None, :, None] + pixels[y1][:, x1] * wx[None, :, None]
    return top * (1 - wy)[:, None, None] + bottom * wy[:, None, None]


def reference_pixels(image: Image.Image) -> torch.Tensor:
    values = naive_bilinear(np.asarray(image, dtype=np.float64) / 255.0, 299) * 2 - 1
    return torch.from_numpy(values).permute(2, 0, 1)


def reference_network(state: dict[str, torch.Tensor], fid: bool) -> Inception3:
    """torchvision's InceptionV3 with `state`; for `fid`, the pool branches of Mixed_5b–7c recomputed as the FID
    Inception defines them. fc is the identity, so the network returns pool3."""
    network = Inception3(num_classes=1008, aux_logits=False, transform_input=False, init_weights=False)
    network.load_state_dict(state)
    if fid:
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7b"):
            setattr(network, name, ReferencePoolBranch(getattr(network, name), average_inside_image))
        network.Mixed_7c = ReferencePoolBranch(network.Mixed_7c, maximum_of_neighbours)
    network.fc = torch.nn.Identity()
    return network.eval()


def test_preprocessing_is_bilinear_to_299_in_minus_one_to_one():
    for image in sample_images():
        ours = fid_preprocess(image)
        assert ours.shape == (3, 299, 299) and ours.dtype == torch.float32
        # PyTorch computes the source coordinates in float32: scale = in/out, (i + ½)·scale − ½, each rounding
        # within u = 2⁻²⁴ relative, so a coordinate is off by ≤ 3u·in pixels; the interpolated value moves by
        # that times the largest step d between neighbouring pixels, on each axis, then ×2 for [-1, 1]; the
        # weighted sums add ≤ 8u. A half-pixel shift or align_corners=True moves values by ≈ d/2 ≫ this bound.
        pixels = np.asarray(image, dtype=np.float64) / 255.0
        step = max(np.abs(np.diff(pixels, axis=0)).max(), np.abs(np.diff(pixels, axis=1)).max())
        bound = 2 * 2 * 3 * 2.0 ** -24 * max(image.size) * step + 8 * 2.0 ** -24
        assert (ours.double() - reference_pixels(image)).abs().max().item() <= bound
        assert bound < 1e-2 * step


def test_the_fid_inception_runs_end_to_end_from_a_pytorch_fid_state_dict(tmp_path, fid_state, one_thread):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save({key: value for key, value in fid_state.items() if not key.endswith("num_batches_tracked")}, path)
    extractor = FIDFeatureExtractor.from_file(path)
    assert extractor.variant == "pytorch-fid" and extractor.settings()["comparable_with_published_fid"] is True
    images = sample_images()
    ours = torch.from_numpy(extractor.features(images, batch_size=2))
    assert ours.shape == (3, FEATURE_DIM_EXPECTED) and torch.isfinite(ours).all() and (ours >= 0).all()

    pixels = torch.stack([reference_pixels(image) for image in images])
    reference = reference_network(fid_state, fid=True)
    with torch.no_grad():
        exact = reference.double()(pixels)
        reference_float32 = reference.float()(pixels.float())
    assert exact.abs().max() > 1e-3 and (exact[0] - exact[1]).abs().max() > 1e-2 * exact.abs().max()
    assert_within_float32_noise(ours, exact, reference_float32, "FID Inception features")

    # The same weights in torchvision's plain blocks give other features: the variant is real.
    plain = reference_network(fid_state, fid=False)
    with torch.no_grad():
        standard = plain.double()(pixels)
    assert (standard - exact).abs().max() > 1e-2 * exact.abs().max()

    save_file({key: value.contiguous() for key, value in fid_state.items()}, tmp_path / "fid.safetensors")
    again = FIDFeatureExtractor.from_file(tmp_path / "fid.safetensors")
    assert torch.equal(torch.from_numpy(again.features(images[:1])), ours[:1])

    mu, sigma = compute_statistics(images, extractor, batch_size=50)
    assert mu.shape == (FEATURE_DIM_EXPECTED,) and sigma.shape == (FEATURE_DIM_EXPECTED,) * 2
    assert np.allclose(mu, ours.numpy().mean(axis=0), rtol=0, atol=1e-12)


def test_torchvisions_inception_is_a_second_labelled_variant(tmp_path, fid_state, one_thread):
    torch.manual_seed(1)
    torchvision_layout = Inception3(num_classes=1000, aux_logits=True, init_weights=False).state_dict()
    for key, value in fid_state.items():
        torchvision_layout[key] = value[:1000] if key.startswith("fc.") else value
    path = tmp_path / "inception_v3_google-0cc3c7bd.pth"
    torch.save(torchvision_layout, path)
    extractor = FIDFeatureExtractor.from_file(path)
    assert extractor.variant == "torchvision"
    assert extractor.settings()["comparable_with_published_fid"] is False
    images = sample_images()[:1]
    reference = reference_network(fid_state, fid=False)
    pixels = reference_pixels(images[0])[None]
    with torch.no_grad():
        exact = reference.double()(pixels)
        reference_float32 = reference.float()(pixels.float())
    ours = torch.from_numpy(extractor.features(images))
    assert ours.shape == (1, FEATURE_DIM_EXPECTED)
    assert_within_float32_noise(ours, exact, reference_float32, "torchvision Inception features")
    with pytest.raises(EvaluationError, match="holds the torchvision Inception, not the pytorch-fid one"):
        FIDFeatureExtractor.from_file(path, variant="pytorch-fid")


def test_missing_or_wrong_weights_are_explained(tmp_path, fid_state):
    with pytest.raises(EvaluationError, match=r"pt_inception-2015-12-05-6726825d\.pth.*--fid-weights FILE.*Nothing "
                                              r"is downloaded"):
        FIDFeatureExtractor.from_file(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    with pytest.raises(EvaluationError, match="must end in"):
        (tmp_path / "weights.bin").write_bytes(b"x")
        FIDFeatureExtractor.from_file(tmp_path / "weights.bin")
    (tmp_path / "broken.pth").write_bytes(b"not a zip")
    with pytest.raises(EvaluationError, match="cannot be read as a state dict"):
        FIDFeatureExtractor.from_file(tmp_path / "broken.pth")
    truncated = dict(fid_state)
    del truncated["Mixed_6c.branch1x1.conv.weight"]
    torch.save(truncated, tmp_path / "truncated.pth")
    with pytest.raises(EvaluationError, match="Mixed_6c.branch1x1.conv.weight is missing"):
        FIDFeatureExtractor.from_file(tmp_path / "truncated.pth")
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "other.pth")
    with pytest.raises(EvaluationError, match="known variant"):
        FIDFeatureExtractor.from_file(tmp_path / "other.pth")
    torch.save({**fid_state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(EvaluationError, match="unexpected keys extra.weight"):
        FIDFeatureExtractor.from_file(tmp_path / "extra.pth")
    target = tmp_path / "created_by_payload"
    torch.save({"fc.weight": CreatesFile(target)}, tmp_path / "evil.pth")
    with pytest.raises(EvaluationError, match="cannot be read as a state dict"):
        FIDFeatureExtractor.from_file(tmp_path / "evil.pth")
    assert not target.exists()


def test_fid_reads_pixels_as_stored_ignoring_exif_orientation_as_pytorch_fid(tmp_path, fid_state, one_thread):
    """pytorch-fid reads a file with `Image.open(path).convert("RGB")`, which does not apply an EXIF orientation tag;
    FID does the same (the pack's other scorers turn the image upright, as OpenCV does for NudeNet). A 200 x 320
    JPEG tagged "rotate 90" (Orientation 6): its features equal those of the pixels as stored, bit for bit (the same
    pixels through the same network in the same batch), and differ from those of the upright image."""
    from psa_core.evaluation.images import load_image

    path = tmp_path / "tagged.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the stored pixels are to be turned 90 degrees clockwise for display
    sample_images()[2].save(path, format="JPEG", quality=75, exif=exif)
    assert load_image(path).size == (320, 200), "the other scorers apply the tag (a test of the tag itself)"
    with Image.open(path) as image:
        as_stored = image.convert("RGB")  # pytorch-fid's reading
    upright = load_image(path)
    assert as_stored.size == (200, 320)

    torch.save({key: value for key, value in fid_state.items() if not key.endswith("num_batches_tracked")},
               tmp_path / "fid.pth")
    extractor = FIDFeatureExtractor.from_file(tmp_path / "fid.pth")
    from_file = extractor.features([path])
    assert np.array_equal(from_file, extractor.features([as_stored]))
    assert np.abs(from_file - extractor.features([upright])).max() > 1e-3 * np.abs(from_file).max()
