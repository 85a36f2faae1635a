"""metrics.py against values worked out by hand, against scipy.stats as a reference, and on the
degenerate inputs (constant predictions, constant scores) that must give 0.0, never NaN."""
import math

import numpy as np
import pytest
from scipy import stats

from metrics import accuracy, average_ranks, f1, matthews, pearson, spearman

# TP = 2 (positions 0, 4), FP = 1 (1), FN = 1 (3), TN = 1 (2)
PREDS = [1, 1, 0, 0, 1]
LABELS = [1, 0, 0, 1, 1]


def test_classification_by_hand():
    assert accuracy(PREDS, LABELS) == pytest.approx(3 / 5)
    assert f1(PREDS, LABELS) == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))  # 2/3
    # (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (2 - 1) / sqrt(3*3*2*2) = 1/6
    assert matthews(PREDS, LABELS) == pytest.approx(1 / 6)


def test_classification_extremes():
    y = np.array([0, 1, 1, 0, 1])
    assert matthews(y, y) == pytest.approx(1.0)
    assert matthews(1 - y, y) == pytest.approx(-1.0)
    assert f1(y, y) == 1.0 and f1(1 - y, y) == 0.0
    assert accuracy(1 - y, y) == 0.0


@pytest.mark.parametrize("constant", [0, 1])
def test_constant_prediction_gives_zero_not_nan(constant):
    labels = np.array([0, 1, 1, 0, 1, 1])
    preds = np.full_like(labels, constant)
    assert matthews(preds, labels) == 0.0
    assert matthews(labels, preds) == 0.0  # constant labels too
    assert f1(preds, labels) == (0.0 if constant == 0 else pytest.approx(2 * 4 / (2 * 4 + 2)))


def test_f1_without_any_positive_is_zero():
    assert f1([0, 0, 0], [0, 0, 0]) == 0.0


def test_binary_matthews_matches_the_textbook_formula_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(20):
        labels, preds = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
        tp = np.sum((preds == 1) & (labels == 1)); tn = np.sum((preds == 0) & (labels == 0))
        fp = np.sum((preds == 1) & (labels == 0)); fn = np.sum((preds == 0) & (labels == 1))
        expected = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        assert matthews(preds, labels) == pytest.approx(expected)


def test_pearson_and_spearman_by_hand():
    # x centred (-1, 0, 1), y centred (-4/3, -1/3, 5/3): r = 3 / sqrt(2 * 14/3) = sqrt(27/28)
    assert pearson([1, 2, 3], [1, 2, 4]) == pytest.approx(math.sqrt(27 / 28))
    # ranks with a tie: x -> (1, 2.5, 2.5, 4), y -> (1, 3, 2, 4); rho = 4.5 / sqrt(4.5 * 5) = sqrt(0.9)
    assert list(average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(math.sqrt(0.9))
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3], [1, 4, 90]) == pytest.approx(1.0)  # monotone, not linear


def test_against_scipy_with_many_ties():
    rng = np.random.default_rng(1)
    for _ in range(10):
        x = rng.integers(0, 6, 200).astype(float)  # STS-B-like scores on a coarse grid: many ties
        y = x + rng.normal(0, 1.5, 200)
        np.testing.assert_allclose(average_ranks(x), stats.rankdata(x))
        assert pearson(y, x) == pytest.approx(stats.pearsonr(y, x)[0], abs=1e-12)
        assert spearman(y, x) == pytest.approx(stats.spearmanr(y, x)[0], abs=1e-12)


def test_constant_regression_gives_zero_not_nan():
    scores = [0.0, 1.0, 4.0]
    # [3.0] * 3 is 0/0 in the textbook formula; [0.1] * 3 leaves float residues around its mean,
    # which the textbook formula turns into ~1e-16 instead of exactly 0
    for const in ([0.1] * 3, [3.0] * 3):
        assert pearson(const, scores) == 0.0 and pearson(scores, const) == 0.0
        assert spearman(const, scores) == 0.0 and spearman(scores, const) == 0.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="equal length"):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError, match="non-empty"):
        f1([], [])
    with pytest.raises(ValueError, match="NaN"):
        pearson([1.0, float("nan")], [1.0, 2.0])
