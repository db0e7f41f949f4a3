"""Verify mode's tolerance for passes that may move a few outputs by a rounding tie."""
import numpy as np
import pytest

from ember.errors import VerificationError
from ember.passes.manager import compare


def test_a_pass_may_declare_a_fraction_of_outliers():
    want = np.linspace(1, 2, 1000).astype(np.float32)
    got = want.copy()
    got[:3] += 0.01                       # 0.3 % of outputs one "step" away
    with pytest.raises(VerificationError, match="max relative error"):
        compare("p", [want], [got], [])
    assert compare("p", [want], [got], [], outliers=0.01) == pytest.approx(0.01 / 1.0, rel=0.1)
    got[:50] += 0.01                      # 5 %: beyond what the pass declared
    with pytest.raises(VerificationError):
        compare("p", [want], [got], [], outliers=0.01)


def test_integer_outputs_use_the_same_budget():
    want = np.arange(1000, dtype=np.uint8)
    got = want.copy()
    got[0] += 1
    with pytest.raises(VerificationError, match="changed 1 element"):
        compare("p", [want], [got], [])
    compare("p", [want], [got], [], outliers=0.01)
