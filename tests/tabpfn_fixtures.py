"""Shared fixtures and toy tables of the TabPFN tests (``from tabpfn_fixtures import template, toy_table``)."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch


def toy_table(n=1300, seed=0):
    """Three numeric features and 4 classes that the features determine (learnable by TTT)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = (X[:, 0] > 0).astype(np.int64) + 2 * (X[:, 1] > 0.5)
    return X, y


def mixed_frame(n=90, seed=0):
    """A DataFrame with a numeric column with gaps, a text column with gaps, booleans and a pandas category."""
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "age": rng.normal(40, 10, n),
        "colour": rng.choice(["red", "green", "blue"], n).astype(object),
        "member": rng.choice([True, False], n),
        "size": pd.Categorical(rng.choice(["S", "M", "L"], n), categories=["S", "M", "L"]),
    })
    df.loc[::7, "age"] = np.nan
    df.loc[::11, "colour"] = None
    y = np.where(df["colour"].eq("red"), "yes", "no")
    return df, pd.Series(y, name="target")


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random TabPFN-v2-architecture checkpoint (emsize 32, 2 layers): fast and offline."""
    from tabpfn.architectures.tabpfn_v2 import TabPFNV2Config, get_architecture

    cfg = TabPFNV2Config(emsize=32, nlayers=2, nhead=2, max_num_classes=10)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = get_architecture(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_tabpfn.ckpt"
    torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(cfg), "architecture_name": "tabpfn_v2"},
               path)
    return str(path)


@pytest.fixture(scope="module")
def template(tiny_ckpt):
    from tabpfn import TabPFNClassifier

    return TabPFNClassifier(model_path=tiny_ckpt, device="cpu")
