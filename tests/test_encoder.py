"""Tests for ttt_helpers.tabpfn.encoder (TableEncoder, check_target): tables to float matrices, no model."""

import numpy as np
import pytest

from tabpfn_fixtures import mixed_frame as _frame
from ttt_helpers.tabpfn.encoder import TableEncoder, check_target, prepare_table


def test_check_target_messages():
    classes, enc = check_target(np.array(["b", "a", "b"]))
    assert list(classes) == ["a", "b"] and list(enc) == [1, 0, 1]
    with pytest.raises(ValueError, match="keep-top-classes 10"):
        check_target(np.arange(12))
    with pytest.raises(ValueError, match="requires y"):
        check_target(None)


def test_table_encoder_roundtrip_state():
    df, _ = _frame()
    enc = TableEncoder().fit(df)
    back = TableEncoder.from_state(enc.to_state())
    np.testing.assert_array_equal(back.transform(df), enc.transform(df))
    assert enc.kinds_ == ["numeric", "categorical", "bool", "categorical"]
    forced = TableEncoder(["age"]).fit(df)
    assert forced.categorical_indices_ == [0, 1, 3]


def test_prepare_table_and_missing_or_unseen_values():
    df, y = _frame()
    Xe, ye, classes, enc = prepare_table(df, y)
    assert Xe.shape == df.shape and list(classes) == ["no", "yes"] and set(ye) == {0, 1}
    assert np.isnan(Xe[0, 0]) and np.isnan(Xe[0, 1])  # missing age, missing colour
    new = df.iloc[:2].copy()
    new.loc[new.index[1], "colour"] = "purple"
    assert np.isnan(enc.transform(new)[1, 1])  # a category never seen in fit
    with pytest.raises(ValueError, match="infinite"):
        enc.transform(df.assign(age=np.inf))
