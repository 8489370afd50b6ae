"""The file of a fitted :class:`~ttt_helpers.tabpfn.classifier.TTTTabPFNClassifier`: one TabPFN v2 checkpoint.

The file holds the adapted weights as any TabPFN checkpoint does (``tabpfn.TabPFNClassifier(model_path=path)``
loads them directly) and the estimator's state (parameters, classes, column encoder, context) under the key
:data:`SAVE_KEY`, in format :data:`SAVE_FORMAT`.

* :func:`write_estimator`: what :meth:`TTTTabPFNClassifier.save` writes;
* :func:`read_estimator`: what :meth:`TTTTabPFNClassifier.load` reads back (ready to predict);
* :func:`saved_state`: the estimator's state in a checkpoint file, if it holds one (for ``resolve_model``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .encoder import TableEncoder

__all__ = ["SAVE_KEY", "SAVE_FORMAT", "write_estimator", "read_estimator", "saved_state"]

SAVE_KEY = "ttt_tabpfn_estimator"
SAVE_FORMAT = 2


def write_estimator(est, path) -> Path:
    """Write the fitted estimator ``est`` to the ``.ckpt`` file ``path`` and return its path."""
    import torch

    from .checkpoints import build_checkpoint, read_checkpoint_config, read_checkpoint_inference_config
    from .finetune import snapshot_state

    path = Path(path)
    if path.suffix != ".ckpt":
        raise ValueError(f"save path must end in .ckpt, got {path.name!r}")
    params = est.get_params()
    params["model"] = str(params["model"])
    if isinstance(params["lr"], (list, tuple, np.ndarray)):
        params["lr"] = [float(v) for v in params["lr"]]
    if not isinstance(params["categorical_features"], (str, type(None))):
        params["categorical_features"] = list(params["categorical_features"])
    state = {
        "format": SAVE_FORMAT,
        "params": params,
        "classes": est.classes_.tolist(),
        "label_order": est.label_order_.tolist(),
        "encoder": est.encoder_.to_state(),
        "context_X": torch.from_numpy(np.ascontiguousarray(est.context_X_)),
        "context_y": torch.from_numpy(np.ascontiguousarray(est.context_y_)),
        "model_description": est.model_description_,
        "base_model": str(est.model_path_),
        "n_ttt_rows": est.n_ttt_rows_,
        "ttt_seconds": est.ttt_seconds_,
        "ttt_losses": [] if est.ttt_history_ is None else list(map(float, est.ttt_history_["losses"])),
        "selected_recipe": est.selected_recipe_,
    }
    config = read_checkpoint_config(est.model_path_)
    return build_checkpoint(config, snapshot_state(est.tabpfn_), path, extra={SAVE_KEY: state},
                            inference_config=read_checkpoint_inference_config(est.model_path_))


def _read_state(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"no saved estimator at {path}")
    try:
        state = saved_state(path)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"{path} is not a checkpoint written by TTTTabPFNClassifier.save ({exc})") from None
    if not state or state.get("format") != SAVE_FORMAT:
        raise ValueError(f"{path} holds no TTTTabPFNClassifier state (key {SAVE_KEY!r}, format {SAVE_FORMAT})")
    return state


def read_estimator(cls, path, *, device: str | None = None):
    """An estimator of class ``cls`` read from a file of :func:`write_estimator` (no TTT is run again)."""
    from .episodes import make_template, prepare_classifier

    path = Path(path)
    state = _read_state(path)
    params = dict(state["params"])
    if device is not None:
        params["device"] = device
    est = cls(**params)
    est._set_encoder(TableEncoder.from_state(state["encoder"]))
    est.classes_ = np.asarray(state["classes"])
    est.label_order_ = np.asarray(state["label_order"], dtype=np.int64)
    est.model_path_ = path.resolve()
    est.model_description_ = f"{state['model_description']}, test-time trained and saved as {path.name}" \
        if state["n_ttt_rows"] else state["model_description"]
    est.context_X_ = state["context_X"].numpy().astype(np.float64)
    est.context_y_ = state["context_y"].numpy().astype(np.int64)
    est.n_context_ = int(len(est.context_y_))
    est.n_ttt_rows_ = int(state["n_ttt_rows"])
    est.ttt_rows_ = est.context_rows_ = None
    est.ttt_seconds_ = float(state["ttt_seconds"])
    est.ttt_history_ = {"losses": list(state["ttt_losses"]), "selected": state["selected_recipe"]} \
        if state["ttt_losses"] else None
    est.selected_recipe_ = state["selected_recipe"]
    seed = 0 if est.random_state is None else int(est.random_state)
    est.tabpfn_ = prepare_classifier(make_template(path, est.device, est.categorical_features_),
                                     n_estimators=est.n_estimators, seed=seed, device=est.device)
    est.fit_seconds_ = 0.0
    return est


def saved_state(path) -> dict | None:
    """The estimator's state stored in a checkpoint file by :func:`write_estimator`, or None (another checkpoint)."""
    import torch

    record = torch.load(str(path), map_location="cpu", weights_only=True)
    return record.get(SAVE_KEY) if isinstance(record, dict) else None
