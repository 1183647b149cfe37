import numpy as np
import pytest

from rakuten_mm.ensemble import check_weights, combine, fit_weights, simplex_grid
from rakuten_mm.errors import ConfigError

pytestmark = pytest.mark.unit


def test_simplex_grid_sums_to_one():
    grid = simplex_grid(3, 0.1)
    assert len(grid) == 66
    assert all(abs(sum(w) - 1) < 1e-9 and min(w) >= 0 for w in grid)
    assert len(simplex_grid(2, 0.05)) == 21


def test_simplex_grid_rejects_bad_step():
    with pytest.raises(ConfigError, match="divide 1"):
        simplex_grid(2, 0.3)


def _onehot(idx, n=3, p=0.9):
    out = np.full((len(idx), n), (1 - p) / (n - 1))
    out[np.arange(len(idx)), idx] = p
    return out


def test_fit_weights_finds_the_known_optimum():
    # Member a is right on rows 0-5 only, member b on rows 6-9 only, but b is more confident when wrong;
    # only a weight of 0.55-ish or more on a keeps rows 0-5 and a's confidence decides the rest.
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    a = _onehot(y, p=0.6)
    a[6:] = _onehot((y[6:] + 1) % 3, p=0.5)
    b = _onehot((y + 1) % 3, p=0.7)
    b[6:] = _onehot(y[6:], p=0.9)
    weights = fit_weights({"a": a, "b": b}, y, step=0.05)
    mixed = combine({"a": a, "b": b}, weights)
    assert (mixed.argmax(1) == y).all()
    assert weights["a"] + weights["b"] == pytest.approx(1.0)
    # Any weight vector that gets every row right must satisfy both inequalities; check against brute force.
    perfect = [w for w in np.linspace(0, 1, 21)
               if (combine({"a": a, "b": b}, {"a": w, "b": 1 - w}).argmax(1) == y).all()]
    assert min(perfect) <= weights["a"] <= max(perfect)


def test_fit_weights_single_member():
    assert fit_weights({"text": _onehot(np.array([0, 1]))}, np.array([0, 1])) == {"text": 1.0}


def test_fit_weights_prefers_lower_log_loss_on_ties():
    y = np.array([0, 1, 2])
    sharp, soft = _onehot(y, p=0.95), _onehot(y, p=0.5)
    weights = fit_weights({"sharp": sharp, "soft": soft}, y, step=0.25)
    assert weights == {"sharp": 1.0, "soft": 0.0}


def test_combine_renormalises_when_a_member_is_missing():
    text = np.array([[0.8, 0.2], [0.3, 0.7]])
    image = np.array([[0.1, 0.9], [0.5, 0.5]])
    present = {"text": np.array([True, True]), "image": np.array([True, False])}
    out = combine({"text": text, "image": image}, {"text": 0.25, "image": 0.75}, present)
    np.testing.assert_allclose(out[0], 0.25 * text[0] + 0.75 * image[0], rtol=1e-6)
    np.testing.assert_allclose(out[1], text[1], rtol=1e-6)  # image absent: text alone


def test_combine_zero_weight_member_alone_and_nothing_present():
    text = np.array([[0.8, 0.2], [0.6, 0.4]])
    image = np.array([[0.1, 0.9], [0.5, 0.5]])
    present = {"text": np.array([True, False]), "image": np.array([False, False])}
    out = combine({"text": text, "image": image}, {"text": 0.0, "image": 1.0}, present)
    np.testing.assert_allclose(out[0], text[0], rtol=1e-6)  # only a zero-weight member present: use it
    np.testing.assert_allclose(out[1], [0.5, 0.5])  # nothing present: uniform


def test_fit_weights_uses_the_presence_mask():
    # The image member is right whenever it has an image (rows 10-19) and carries confident garbage where it has
    # none (rows 0-9); the text member is right on rows 0-9 only. Honouring the mask, image-heavy weights get
    # every row right; mixing the garbage in (mask ignored) would make the rows without an image pull the weight
    # back towards text and lose rows 10-19.
    y = np.array([0, 1, 2] * 6 + [0, 1])
    has_image = np.arange(20) >= 10
    text = _onehot(y, p=0.7)
    text[10:] = _onehot((y[10:] + 1) % 3, p=0.7)
    image = _onehot(y, p=0.9)
    image[:10] = _onehot((y[:10] + 2) % 3, p=0.99)
    probs = {"text": text, "image": image}
    present = {"text": np.ones(20, bool), "image": has_image}
    weights = fit_weights(probs, y, present, step=0.05)
    assert (combine(probs, weights, present).argmax(1) == y).all()
    assert weights["image"] > 0.5
    # Brute force over the same grid, with the mask, agrees on the score.
    best = max((combine(probs, {"text": 1 - w, "image": w}, present).argmax(1) == y).mean()
               for w in np.linspace(0, 1, 21))
    assert best == 1.0


@pytest.mark.parametrize(("weights", "match"), [
    ({"text": -5.0, "image": 6.0}, r"each lie in \[0, 1\]"),
    ({"text": 0.3, "image": 0.3}, "must sum to 1"),
    ({"text": float("nan"), "image": 1.0}, r"each lie in \[0, 1\]"),
    ({"text": 1.0}, "name exactly the members"),
])
def test_check_weights_refuses_points_off_the_simplex(weights, match):
    with pytest.raises(ConfigError, match=match):
        check_weights(weights, ["text", "image"])


def test_check_weights_accepts_rounded_fitted_weights():
    assert check_weights({"a": 0.333333, "b": 0.333333, "c": 0.333334}, ["a", "b", "c"])["c"] == 0.333334
