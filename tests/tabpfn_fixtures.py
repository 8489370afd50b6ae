"""Shared pytest fixtures of the TabPFN tests (import them into a test module: ``from tabpfn_fixtures import template``)."""

import dataclasses

import pytest
import torch


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
