"""A scikit-learn classifier that test-time trains TabPFN on part of your table: :class:`TTTTabPFNClassifier`.

``fit(X, y)`` splits the labelled rows in two (seeded):

* ``ttt_size`` rows are spent on **test-time training** (:func:`ttt_helpers.tabpfn.protocol.adapt`, the TTT step
  of the paper's protocol): by default the learning rate (from the grid ``lr``) and the number of steps (at most
  ``steps``) are chosen on a validation slice of these rows by early stopping, at validation contexts of several
  sizes up to the longest these rows allow and at the ``context_size`` the predictions will use, and the pretrained
  weights are kept when TTT does not beat them there (:func:`ttt_helpers.tabpfn.finetune.select_recipe`); when
  the predictions' context is longer than every validated one (the default: the context is all the rows not spent
  on TTT, more than the TTT rows' training part), the adapted weights are kept only if they gained at the longest
  validated context (:func:`ttt_helpers.tabpfn.finetune.adapted_at`: the guard is not extrapolated);
  ``early_stopping=False`` runs one fixed recipe instead;
* of the other rows, ``context_size`` are kept as the **context** that every prediction conditions on.

``predict_proba(X)`` is then one TabPFN forward pass per batch of query rows, with the adapted weights and the
kept context, through the same ``tabpfn`` fine-tuning path that training used
(:mod:`ttt_helpers.tabpfn.episodes`, labels in the table's label space). ``ttt_size=0`` (or ``steps=0``) gives the
same predictor without TTT: the baseline to compare with. With the pretrained weights (no TTT, or TTT kept
them), a class that the context rows lack gets probability 0, as in ``tabpfn``'s own ``predict``: pretraining
never trained its output. Adapted weights give every class a probability.

Which weights are adapted is recorded in ``model_description_``: the official TabPFN v2 classifier checkpoint
if the machine has it, else the book's own fallback (``data/models/tabpfn_fallback.ckpt``), or any checkpoint
file you name (:func:`resolve_model`). Nothing is ever downloaded.

Inputs: a NumPy array or a pandas DataFrame, encoded by :class:`ttt_helpers.tabpfn.encoder.TableEncoder`
(categorical columns coded ``0..K-1``, missing values allowed in features, not in the target; infinite values
rejected).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from .encoder import MAX_CLASSES, TableEncoder, check_target, class_count_error, frequency_order
from .estimator_file import read_estimator, saved_state, write_estimator
from .fit_plan import plan_rows

__all__ = ["resolve_model", "TTTTabPFNClassifier"]

# ----------------------------------------------------------------------------------------------------------
# Which checkpoint


def resolve_model(model="auto", *, verify: bool = True):
    """The checkpoint file behind ``model`` and a one-line description of it (never downloads anything).

    Parameters
    ----------
    model : {"auto", "official", "fallback"} or path-like
        ``"auto"``: the official TabPFN v2 classifier checkpoint if present on this machine, else the book's
        fallback ``data/models/tabpfn_fallback.ckpt``; ``"official"``: the official one or an error;
        ``"fallback"``: ours (sha256-checked); a path: that ``.ckpt`` file (e.g. one written by
        :meth:`TTTTabPFNClassifier.save`).

    Returns
    -------
    (pathlib.Path, str)
    """
    from . import checkpoints as tm

    if isinstance(model, str) and model in ("auto", "official", "fallback"):
        if model in ("auto", "official"):
            path = tm.official_checkpoint_path()
            if path is not None:
                return path, f"official TabPFN v2 classifier checkpoint ({path.name})"
            if model == "official":
                raise ValueError(f"model='official' but no official TabPFN v2 checkpoint is on this machine (set "
                                 f"${tm.OFFICIAL_ENV_VAR} to the .ckpt file); use model='auto' or 'fallback'")
        path = tm.fallback_checkpoint_path()
        if not path.is_file():
            raise ValueError(f"no official TabPFN v2 checkpoint (set ${tm.OFFICIAL_ENV_VAR}) and no fallback at "
                             f"{path}; run scripts/pretrain_tabpfn.py or pass model=<path to a .ckpt>")
        if verify:
            tm.verify_sha256(path)
        return path, tm._describe_fallback(path)
    if not isinstance(model, (str, Path)):
        raise ValueError(f"model must be 'auto', 'official', 'fallback' or a path to a .ckpt file, got {model!r}")
    path = Path(model).expanduser()
    if not path.is_file():
        # tabpfn would try to download a checkpoint it cannot find: never hand it a missing path
        raise ValueError(f"model={str(model)!r}: expected 'auto', 'official', 'fallback' or an existing .ckpt file; "
                         "no such file")
    desc = f"checkpoint file {path.name}"
    try:
        saved = saved_state(path)
        if saved:
            desc = f"{saved['model_description']}, test-time trained and saved as {path.name}"
    except Exception:  # noqa: BLE001 - a description only; tabpfn reports unreadable files itself
        pass
    return path.resolve(), desc


# ----------------------------------------------------------------------------------------------------------
# The estimator


def _has_varying_feature(A: np.ndarray) -> bool:
    """Whether some column of ``A`` takes two different non-missing values."""
    for j in range(A.shape[1]):
        col = A[:, j]
        col = col[~np.isnan(col)]
        if col.size and col.min() < col.max():
            return True
    return False


def _guard(history: dict, n_context: int) -> dict:
    """Whether a search's adapted weights may predict with ``n_context`` context rows
    (:func:`ttt_helpers.tabpfn.finetune.adapted_at`), as the record ``ttt_history_["guard"]``: ``n_context``, the
    longest validated context, the search's choice (``chosen``) and its validation gain there (None when the search
    kept the pretrained weights), and ``restored`` (the search adapted the weights, the rule says no: the pretrained
    weights are restored)."""
    from .finetune import adapted_at, chosen_validation_gains

    vg = chosen_validation_gains(history)
    out = {"n_context": int(n_context), "longest_validated": int(history["validation_sizes"][-1]),
           "chosen": history["selected"], "gain_at_longest": None, "se_at_longest": None, "restored": False}
    if vg is not None:
        out.update(gain_at_longest=float(vg[1][-1]), se_at_longest=float(vg[2][-1]),
                   restored=not adapted_at(history, n_context))
    return out


class TTTTabPFNClassifier(ClassifierMixin, BaseEstimator):
    """TabPFN v2 with test-time training on part of the training rows (scikit-learn API).

    Parameters
    ----------
    model : {"auto", "official", "fallback"} or path, default "auto"
        Which TabPFN v2 checkpoint to adapt (see :func:`resolve_model`); never downloaded.
    ttt_size : int or float, default 0.5
        Rows spent on test-time training: a number of rows, or a fraction in (0, 1) of the training rows.
        ``0`` switches TTT off (plain TabPFN on the context: the baseline).
    context_size : int, float or None, default None
        Rows kept as the context of every prediction, drawn from the rows not used for TTT (or from all rows if
        ``reuse_ttt_rows``): a number, a fraction in (0, 1), or ``None`` for all of them.
    reuse_ttt_rows : bool, default False
        Let the context include the TTT rows too. ``False`` is the paper's protocol (TTT rows and context are
        disjoint); ``True`` uses every labelled row twice, which is legitimate when no test rows are involved.
    steps : int, default 200
        Most TTT optimiser steps per learning rate, one episode each (with ``early_stopping=False``: the steps);
        ``0`` switches TTT off.
    lr : float or sequence of float, default (1e-4, 3e-4)
        The learning-rate grid of the recipe search (constant learning rate); a single value with
        ``early_stopping=False``. Lower than the Figure-3 search's grid (``RecipeSearch.lrs``, 3e-4 and 1e-3),
        chosen on development tables in this estimator's regime (``scripts/check_search_defaults.py --family
        estimator``, ``data/results/check_ttt_estimator_fallback.json`` and ``..._low_fallback.json``: 26 tables x
        3 seeds, default split and episodes, context = the whole pool): +0.009 +- 0.004 over context sizes 2 to
        the whole pool, ahead at every size; on the large TTT sets of the Figure-3 regime the same change gave only
        +0.005 +- 0.004, so that search keeps its grid.
    early_stopping : bool, default True
        Choose the learning rate and the number of steps on a validation slice of the TTT rows, and keep the
        pretrained weights when TTT does not beat them there (:class:`ttt_helpers.tabpfn.finetune.RecipeSearch`);
        ``False``: ``steps`` steps at the single learning rate ``lr``.
    validation_fraction : float, default 0.2
        Share of the TTT rows held out as the validation slice.
    eval_every : int, default 20
        Steps between two validation scores.
    n_iter_no_change : int, default 3
        Validation scores without improvement after which a learning rate's run stops.
    optimizer : {"adamw", "sgd"}, default "adamw"
        AdamW (``weight_decay``) or SGD with heavy-ball ``momentum`` (the paper found them about equal).
    n_query : int, default 128
        Query rows per TTT episode (the rest of an episode's rows is its context, of random size).
    max_context : int or None, default 256
        Largest context of a TTT episode (sizes are drawn log-uniformly from 2 to this); ``None``: all the TTT
        rows that are not queries. A small value makes each step cheap, and trains where TTT helps most.
    weight_decay, momentum, grad_clip : float
        See :class:`ttt_helpers.tabpfn.finetune.TTTConfig`.
    n_estimators : int, default 1
        TabPFN ensemble members (preprocessing variants) per episode and per prediction.
    categorical_features : "auto", None or list of int/str, default "auto"
        See :class:`ttt_helpers.tabpfn.encoder.TableEncoder`.
    batch_size : int, default 1024
        Query rows per forward pass in ``predict_proba``.
    device : str, default "cpu"
    random_state : int, default 0
        Seeds the row split, the TTT episodes and TabPFN's preprocessing.
    verbose : bool, default False
        Progress bar for the TTT steps (on stderr).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    n_features_in_ : int
    feature_names_in_ : ndarray of str (only when fitted on a DataFrame with string column names)
    model_path_ : pathlib.Path — the checkpoint that was adapted
    model_description_ : str — which model (official TabPFN v2 or our fallback) produced the predictions
    encoder_ : TableEncoder
    categorical_features_ : list of int — column indices treated as categorical
    n_ttt_rows_, n_context_ : int
    ttt_rows_, context_rows_ : ndarray of int — row indices (into the training X) of the two parts
    context_X_ : ndarray (n_context, n_features_in) float — the encoded context
    context_y_ : ndarray of int — its labels as the model sees them: codes ``0..C-1`` by descending frequency in
        the training rows (code ``k`` is class ``classes_[label_order_[k]]``; see
        :func:`ttt_helpers.tabpfn.encoder.frequency_order`)
    label_order_ : ndarray of int
    ttt_history_ : dict or None — the record of :func:`ttt_helpers.tabpfn.protocol.adapt` (``losses``,
        ``selected``, ``seconds``, and for a search its validation scores)
    selected_recipe_ : dict or None — ``{"lr", "steps"}`` of the weights kept; None when the pretrained weights
        were kept (no TTT, TTT did not beat them on the validation slice, or the context is longer than every
        validated one and the chosen checkpoint did not gain at the longest: ``ttt_history_["guard"]`` says which)
    ttt_seconds_ : float — wall time of TTT, recipe search included (0.0 without TTT)
    fit_seconds_ : float
    tabpfn_ : tabpfn.TabPFNClassifier — the adapted classifier (fine-tuning set-up of ``prepare_classifier``)
    """

    def __init__(self, model="auto", *, ttt_size=0.5, context_size=None, reuse_ttt_rows=False, steps=200,
                 lr=(1e-4, 3e-4), early_stopping=True, validation_fraction=0.2, eval_every=20,
                 n_iter_no_change=3, optimizer="adamw", n_query=128, max_context=256, weight_decay=0.01,
                 momentum=0.9, grad_clip=1.0, n_estimators=1, categorical_features="auto", batch_size=1024,
                 device="cpu", random_state=0, verbose=False):
        self.model = model
        self.ttt_size = ttt_size
        self.context_size = context_size
        self.reuse_ttt_rows = reuse_ttt_rows
        self.steps = steps
        self.lr = lr
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.eval_every = eval_every
        self.n_iter_no_change = n_iter_no_change
        self.optimizer = optimizer
        self.n_query = n_query
        self.max_context = max_context
        self.weight_decay = weight_decay
        self.momentum = momentum
        self.grad_clip = grad_clip
        self.n_estimators = n_estimators
        self.categorical_features = categorical_features
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- scikit-learn plumbing ----------------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True
        tags.input_tags.categorical = True
        tags.input_tags.string = True
        tags.non_deterministic = False
        return tags

    def _set_encoder(self, encoder: TableEncoder) -> None:
        """Store the fitted column encoder and what it knows of the columns."""
        self.encoder_ = encoder
        self.n_features_in_ = encoder.n_features_in_
        if encoder.feature_names_in_ is not None:
            self.feature_names_in_ = encoder.feature_names_in_
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        self.categorical_features_ = list(encoder.categorical_indices_)

    # -- fit / predict ------------------------------------------------------------------------------------
    def fit(self, X, y):
        """Test-time train on ``ttt_size`` rows of (X, y) and keep ``context_size`` others as the context.

        Everything is validated before anything is stored: on an error the estimator is left as it was.

        Parameters
        ----------
        X : array-like or DataFrame, shape (n, d); NaN/None allowed, inf not
        y : array-like, shape (n,); 2 to 10 classes, no missing values

        Returns
        -------
        self
        """
        from .episodes import make_template, prepare_classifier
        from .finetune import RecipeSearch, load_state, snapshot_state
        from .protocol import adapt

        t0 = time.perf_counter()
        encoder = TableEncoder(self.categorical_features).fit(X)
        Xe = encoder.transform(X)
        classes, y_sorted = check_target(y, n_rows=Xe.shape[0])
        label_order = frequency_order(y_sorted, len(classes))
        code = np.empty_like(label_order)
        code[label_order] = np.arange(len(label_order))
        y_enc = code[y_sorted]  # 0 = the most frequent class
        seed = 0 if self.random_state is None else int(self.random_state)
        rng = np.random.default_rng(seed)
        ttt_rows, context_rows, config, do_ttt = plan_rows(self.get_params(deep=False), len(y_enc), rng)
        path, description = resolve_model(self.model)
        max_classes = self._max_classes(path)
        if len(classes) > max_classes:
            raise ValueError(class_count_error(len(classes), None, max_classes))
        ctx_X, ctx_y = Xe[context_rows], y_enc[context_rows]
        if not _has_varying_feature(ctx_X):
            raise ValueError("every feature is constant (or missing) on the context rows; TabPFN needs at least one "
                             "feature that varies")
        clf = prepare_classifier(make_template(path, self.device, encoder.categorical_indices_),
                                 n_estimators=self.n_estimators, seed=seed, device=self.device)
        history, ttt_seconds = None, 0.0
        if do_ttt:
            search = isinstance(config, RecipeSearch)  # only a search's guard may restore the pretrained weights
            pretrained = snapshot_state(clf) if search else None
            history = adapt(clf, Xe[ttt_rows], y_enc[ttt_rows], len(classes), config, rng,
                            progress=bool(self.verbose), seed=seed)
            ttt_seconds = float(history["seconds"])
            if search:
                history["guard"] = _guard(history, len(context_rows))
                if history["guard"]["restored"]:
                    load_state(clf, pretrained)
                    history["selected"] = None
        # everything validated and computed: store the learned state
        self._set_encoder(encoder)
        self.classes_ = classes
        self.label_order_ = label_order
        self.model_path_ = path
        self.model_description_ = description
        self.ttt_rows_, self.context_rows_ = ttt_rows, context_rows
        self.n_ttt_rows_, self.n_context_ = int(len(ttt_rows)), int(len(context_rows))
        self.context_X_, self.context_y_ = ctx_X, ctx_y
        self.ttt_history_ = history
        self.selected_recipe_ = None if history is None else history["selected"]
        self.ttt_seconds_ = ttt_seconds
        self.tabpfn_ = clf
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    @staticmethod
    def _max_classes(path) -> int:
        from .checkpoints import read_checkpoint_config

        try:
            return int(min(MAX_CLASSES, read_checkpoint_config(path).get("max_num_classes", MAX_CLASSES)))
        except Exception:  # noqa: BLE001 - an unreadable config: tabpfn will say so when it loads the file
            return MAX_CLASSES

    def _logits(self, Xe: np.ndarray) -> np.ndarray:
        from .episodes import episode_logits, make_episode

        out = []
        n_classes = len(self.classes_)
        dummy = np.full(1, self.context_y_[0], dtype=np.int64)
        for start in range(0, len(Xe), int(self.batch_size)):
            chunk = Xe[start:start + int(self.batch_size)]
            ep = make_episode(self.tabpfn_, self.context_X_, self.context_y_, chunk, np.repeat(dummy, len(chunk)),
                              n_classes=n_classes, seed=0 if self.random_state is None else int(self.random_state))
            logits = episode_logits(self.tabpfn_, ep, n_classes).mean(dim=1)  # (q, C): ensemble mean
            out.append(logits.detach().cpu().double().numpy())
        return np.concatenate(out, axis=0)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape ``(n, n_classes)``, columns in the order of ``classes_``."""
        check_is_fitted(self, "tabpfn_")
        Xe = self.encoder_.transform(X)
        z = self._logits(Xe)
        if self.selected_recipe_ is None:
            # pretrained weights: tabpfn's rule, no probability for a class the context lacks (its output was
            # never trained; finetune.ZERO_SHOT_RULE). Adapted weights keep every class: TTT trained them all.
            z[:, ~np.isin(np.arange(z.shape[1]), self.context_y_)] = -np.inf
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        out = np.empty_like(p)
        out[:, self.label_order_] = p  # model code k is class classes_[label_order_[k]]
        return out

    def predict(self, X) -> np.ndarray:
        """The most probable class of each row, shape ``(n,)``."""
        check_is_fitted(self, "tabpfn_")
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    # -- persistence --------------------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write the adapted model to one ``.ckpt`` file and return its path.

        The file is a TabPFN v2 checkpoint (``tabpfn.TabPFNClassifier(model_path=path)`` loads the adapted
        weights directly) with the estimator's state (parameters, classes, column encoder, context) stored
        under the key ``"ttt_tabpfn_estimator"``; :meth:`load` reads it back. The file name must end in
        ``.ckpt`` and must not contain ``v2.5``, ``v2.6`` or ``v3`` (``tabpfn`` reads versions from names).
        """
        check_is_fitted(self, "tabpfn_")
        return write_estimator(self, path)

    @classmethod
    def load(cls, path, *, device: str | None = None) -> "TTTTabPFNClassifier":
        """Read an estimator written by :meth:`save` (ready to predict; no TTT is run again)."""
        return read_estimator(cls, path, device=device)
