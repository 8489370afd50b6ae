"""The pretraining loop: :class:`Trainer` builds (or resumes) the model, trains within a budget, evaluates, exports.

One call of :meth:`Trainer.run` trains until a time or step budget (over all calls of the run) is spent or
the call's wall limit nears. Each step takes the curriculum stage in force, a prior batch (a fresh one, or the
batch in use again: :meth:`Trainer._next_batch`), turns it into a task (:func:`.forward.to_task`) and takes an
optimiser step; the loop logs a loss window every 25 steps and evaluates periodically. The weights to ship are
chosen on the development set (:meth:`Trainer.select`) and exported with their provenance
(:meth:`Trainer.export`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from ...provenance import git_commit, machine_description
from .. import checkpoints as tm
from .config import PretrainConfig, resume_config, resume_mismatch, run_priors, stage_index, stage_prior
from .distributed import DistInfo, all_gather, barrier, from_rank0
from .forward import configure_sdpa, forward_loss, to_task
from .prior import _mix, _Prefetch, _seed_all, prior_batch, prior_stream
from .state import (EMA_FILE, _fresh_meta, load_ema, load_state, lr_at, make_model, make_optimizers, model_to_device,
                    save_state)

__all__ = ["Trainer", "configure_host"]


@dataclasses.dataclass
class _CallLoop:
    """What the loop of one :meth:`Trainer.run` call carries from step to step (besides ``Trainer.meta``)."""

    gen: torch.Generator  # draws the step's permutations (replaced at every step with per-batch seeding)
    bar: object  # the tqdm progress bar
    last_eval_time: float
    last_eval_step: int
    stage: int | None = None  # the curriculum stage of the open prior stream
    it: _Prefetch | None = None  # that stream
    batch: tuple | None = None  # the prior batch in use
    index: int | None = None  # its index in the stage's stream (per-batch seeding)
    reuse_left: int = 0  # its required uses left
    uses: int = 0  # its uses so far
    log_sums: torch.Tensor | None = None  # the logging window's sums of loss and accuracy (on the device), count
    log_n: int = 0

    def close(self) -> None:
        self.bar.close()
        if self.it is not None:
            self.it.close()


class Trainer:
    """The pretraining loop of one call: build (or resume) the model, train within a budget, evaluate, export.

    Parameters
    ----------
    cfg : PretrainConfig
    out_dir : path-like
        Where the training state and the temporary evaluation checkpoint go.
    resume : path-like, optional
        A folder holding a state written by :func:`save_state` (an earlier call of the same run).
    evaluator : callable, optional
        ``evaluator(model, model_config, ckpt_path) -> dict`` of metrics, called every ``cfg.eval_every`` and
        at the end of the call (:class:`.pretrain_eval.Evaluator`); ``None``: no evaluation, no state files.
    command : str
        The command line of this call (recorded in the state and the provenance).
    log : callable
        Where progress lines go (``print``).
    progress_bar : bool
        Show a tqdm bar.

    dist : DistInfo, optional
        This process's place in a data-parallel run (:func:`init_distributed`). With ``world_size`` > 1 the
        model is wrapped in ``DistributedDataParallel``; each process draws its own prior batches (its rank
        enters the seeds), process 0's clock decides the progress, the stops and the evaluations, and only
        process 0 evaluates, saves the state and should export.

    Notes
    -----
    The global NumPy, ``random`` and torch generators are seeded with ``cfg.seed`` here (tabicl's priors draw
    from them), as the script that trained the shipped fallback did.
    """

    def __init__(self, cfg: PretrainConfig, *, out_dir, resume=None, evaluator=None, command: str = "",
                 log=print, progress_bar: bool = False, dist: DistInfo | None = None):
        self.cfg, self.out_dir, self.evaluator, self.log = cfg, Path(out_dir), evaluator, log
        self.dist = dist or DistInfo()
        self.rank, self.world = self.dist.rank, self.dist.world_size
        self.progress_bar = progress_bar
        self.device = torch.device(cfg.device)
        self.use_cuda = self.device.type == "cuda"
        self.autocast = self.use_cuda and cfg.autocast
        configure_sdpa(cfg.sdpa)
        configure_host(self.device)
        _seed_all(cfg.seed)
        self.model_config, model = make_model(cfg)
        self.model = model_to_device(model, self.device)
        self.model.train()
        self.n_params = tm.count_parameters(self.model)
        self.optimizers = make_optimizers(self.model, cfg, fused=self.use_cuda)
        self.meta = _fresh_meta()
        if cfg.init_from and resume is None:
            self.meta["init_from"] = self._warm_start(cfg.init_from)
            log(f"warm start from {cfg.init_from} (sha256 {self.meta['init_from']['sha256'][:12]})")
        if resume is not None:
            self.meta = load_state(resume, self.model, self.optimizers, self.device)
            log(f"resumed from {resume}: step {self.meta['step']}, {self.meta['train_seconds'] / 60:.2f} training min")
            if "config" not in self.meta:
                log(f"note: {resume} records no configuration (written before 2026-12-07); this call's is recorded")
            elif mismatch := resume_mismatch(self.meta["config"], cfg):
                raise ValueError(f"--resume {resume}: this call's configuration differs from the state's in "
                                 f"{mismatch} (state, call); a resumed run keeps every option but "
                                 "pretrain.RESUME_FREE_FIELDS")
        self.meta["config"] = resume_config(cfg)
        self.ema = self._start_ema(resume)
        self.call_index = len(self.meta["calls"])
        self.meta["calls"].append({"command": command, "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                   "git_commit": git_commit(),  # the code this call runs, not the tree at its end
                                   "host_threads": torch.get_num_threads(),
                                   # two cards of one model have differed by half in steps a minute: which host
                                   "machine": machine_description()})
        self.ddp = None
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # gradients are averaged over the processes in backward; every process then takes the same step
            self.ddp = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.use_cuda else None)
        self.step_hook = None  # called as step_hook(trainer, task) after every optimiser step
        self.best, self.snapshots = None, []
        self.budget = None
        self.data_wait = 0.0
        self.steps_this_call = 0
        self.batch_index = None  # the index of the last step's prior batch (per-batch seeding)
        self.ckpt_eval = self.out_dir / "tabpfn_fallback_eval.ckpt"
        device_name = torch.cuda.get_device_name(self.device) if self.use_cuda else "cpu"
        log(f"model: TabPFN {cfg.architecture} architecture, {self.n_params:,} parameters, config "
            f"{self.model_config}; device {device_name}")
        cores = _usable_cores()
        if cfg.workers >= cores:
            log(f"warning: {cfg.workers} prior workers on {cores} usable CPU cores: the workers and the training "
                f"loop share cores (the named recipes were timed with 15 workers on 16 cores); consider "
                f"workers={max(1, cores - 1)}")

    def _warm_start(self, path) -> dict:
        """Load the weights of an exported checkpoint into the freshly built model; its path and sha256."""
        from ...provenance import sha256_file

        record = tm._load_checkpoint(path)
        arch = tm.architecture_of(record["config"])
        if arch != self.cfg.architecture:
            raise ValueError(f"init_from: {path} holds a {arch} model, the configuration asks for "
                             f"{self.cfg.architecture}")
        try:
            self.model.load_state_dict(record["state_dict"])
        except RuntimeError as err:
            raise ValueError(f"init_from: the weights in {path} do not fit the configured model "
                             f"({self.model_config}): {str(err).splitlines()[0]}") from err
        return {"path": str(path), "sha256": sha256_file(path)}

    # -- progress ------------------------------------------------------------------------------------------
    def spent(self) -> float:
        """Training seconds (time clock) or steps (step clock) spent so far, over all calls."""
        return self.meta["train_seconds"] if self.cfg.clock == "time" else float(self.meta["step"])

    def progress(self) -> float:
        """Fraction of the budget spent (drives the curriculum and the learning-rate schedule)."""
        return self.spent() / self.budget

    # -- evaluation ----------------------------------------------------------------------------------------
    def evaluate(self, tag: str) -> dict:
        """Run the evaluator on the current weights and record the result in ``meta["evals"]``.

        With ``cfg.ema`` the evaluator rates the moving average, and then the trained weights too (their
        ``dev_acc``, ``val_loss`` and ``val_acc`` under ``"trained"``), which nothing selects.
        When the evaluator reports a development-set accuracy (``dev_acc``), the weights with the best one so
        far are kept (:attr:`best`), and with ``cfg.lawa`` the last ``lawa`` evaluated weights (for
        :meth:`select`).
        """
        ev = {"step": self.meta["step"], "train_minutes": round(self.meta["train_seconds"] / 60, 3), "tag": tag}
        with self.evaluated_weights():
            ev.update(self.evaluator(self.model, self.model_config, self.ckpt_eval))
            weights = tm.cpu_state_dict(self.model)
        if self.ema is not None:  # the trained weights too, for a comparison paired step by step
            trained = self.evaluator(self.model, self.model_config, self.ckpt_eval)
            ev["trained"] = {k: trained[k] for k in ("dev_acc", "val_loss", "val_acc") if k in trained}
        self.meta["evals"].append(ev)
        self.log("EVAL " + json.dumps(ev))
        if "dev_acc" in ev:
            if self.best is None or ev["dev_acc"] > self.best["dev_acc"]:
                self.best = {"dev_acc": ev["dev_acc"], "step": ev["step"], "train_minutes": ev["train_minutes"],
                             "state_dict": weights}
            if self.cfg.lawa:
                self.snapshots = (self.snapshots + [weights])[-self.cfg.lawa:]
        return ev

    def select(self, score) -> tuple[dict, dict]:
        """The weights to export, chosen on the development set: ``(state_dict, record)``.

        Candidates: the current weights (with ``cfg.ema``, their moving average), the evaluated weights with the
        best ``dev_acc`` (:attr:`best`) and, with ``cfg.lawa``, the average of the last ``lawa`` evaluated weights.
        ``score(state_dict) -> float`` rates a candidate (the evaluator's development-set accuracy); the best one
        wins, ties going to the earlier candidate in that order. ``record`` says which candidate won and every
        candidate's score.
        """
        current = self.evaluated_state_dict()
        candidates = {"last": current}
        if self.best is not None:
            candidates[f"best_dev_step_{self.best['step']}"] = self.best["state_dict"]
        if self.cfg.lawa and len(self.snapshots) > 1:
            n = len(self.snapshots)
            candidates[f"lawa_{n}"] = {k: (sum(s[k].double() for s in self.snapshots) / n).to(current[k].dtype)
                                       if current[k].is_floating_point() else current[k] for k in current}
        scores = {name: round(float(score(sd)), 4) for name, sd in candidates.items()}
        chosen = max(scores, key=lambda k: (scores[k], -list(scores).index(k)))
        self.log(f"selection on the development set: {scores} -> {chosen}")
        return candidates[chosen], {"chosen": chosen, "dev_acc": scores}

    def save(self) -> None:
        save_state(self.out_dir, self.model, self.optimizers, self.meta, ema=self.ema)

    # -- the moving average of the weights (cfg.ema) -------------------------------------------------------
    def _start_ema(self, resume):
        """The moving average's tensors (one per parameter), or None without ``cfg.ema``: read from a resumed state's
        :data:`EMA_FILE`, else copies of the model's weights (fresh, warm-started, or a state saved without one)."""
        if not self.cfg.ema:
            return None
        if resume is not None:
            saved = load_ema(resume, self.model, self.device)
            if saved is not None:
                return saved
            self.log(f"warning: {resume} holds no {EMA_FILE}; the moving average starts from the resumed weights")
        return [p.detach().clone() for p in self.model.parameters()]

    def _update_ema(self) -> None:
        """One step of the moving average: decay ``min(cfg.ema, (1 + t) / (10 + t))`` at step ``t`` (a short memory
        at first, as the weights move fast), the weights themselves weighted by one minus it."""
        t = self.meta["step"]
        decay = min(float(self.cfg.ema), (1 + t) / (10 + t))
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, [p.detach() for p in self.model.parameters()], 1.0 - decay)

    def evaluated_state_dict(self) -> dict:
        """A CPU copy of the weights that evaluation, selection and export read (:meth:`evaluated_weights`)."""
        with self.evaluated_weights():
            return tm.cpu_state_dict(self.model)

    @contextlib.contextmanager
    def evaluated_weights(self):
        """Within the block the model holds the weights that evaluation, selection and export read: with
        ``cfg.ema`` their moving average (the trained weights are put back after), else the trained weights."""
        if self.ema is None:
            yield
            return
        params = list(self.model.parameters())
        with torch.no_grad():
            trained = [p.detach().clone() for p in params]
            for p, e in zip(params, self.ema):
                p.copy_(e)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, t in zip(params, trained):
                    p.copy_(t)

    # -- the loop ------------------------------------------------------------------------------------------
    def run(self, budget: float, *, wall_limit_s: float = math.inf, max_steps: int = 0, final_call: bool = False,
            t_start: float | None = None, reserve_s: float = 60.0) -> bool:
        """Train until the budget is spent (over all calls), the wall limit nears, or ``max_steps`` steps.

        Parameters
        ----------
        budget : float
            Total training seconds (``cfg.clock == "time"``) or steps (``"steps"``) of the whole run.
        wall_limit_s : float
            This call stops, saving its state, ``reserve_s`` before this many seconds after ``t_start``.
        max_steps : int
            Stop this call after so many steps (0: no limit).
        final_call : bool
            End training in this call (time clock): the budget is reset to what the wall limit leaves after
            the periodic evaluations, at the cost measured in earlier calls or, in a run's first call, by an
            evaluation at its start (process 0 plans; every process trains to its budget).
        t_start : float, optional
            ``time.time()`` at the start of the call (default: now).
        reserve_s : float
            Wall time kept for the final evaluation and the export.

        Returns
        -------
        bool
            Whether the run is done (budget spent, or ``final_call``); then call :meth:`export`.
        """
        cfg, meta = self.cfg, self.meta
        t_start = time.time() if t_start is None else t_start
        if final_call and cfg.clock == "time" and self.evaluator is not None and not meta["evals"]:
            self._timed_evaluation("start")  # what a periodic evaluation costs, before the budget is planned on it
        self._set_budget(budget, final_call=final_call, wall_left_s=wall_limit_s - (time.time() - t_start) - reserve_s)
        loop = _CallLoop(gen=torch.Generator().manual_seed(cfg.seed * 7919 + self.call_index + 1_000_003 * self.rank),
                         bar=self._progress_bar(), last_eval_time=time.time(), last_eval_step=meta["step"])
        while not self._should_stop(t_start, wall_limit_s - reserve_s, max_steps):
            t_step = time.time()
            s_idx = self._enter_stage(loop)
            if cfg.seeding == "per_batch":
                loop.gen = torch.Generator().manual_seed(_mix(cfg.seed, self.rank, meta["step"]))
            batch, fresh = self._next_batch(loop, cfg.curriculum[s_idx])
            self.batch_index = loop.index
            task = to_task(batch, self.device, loop.gen, reshuffle=not fresh, max_classes=cfg.max_num_classes,
                           small_context_frac=cfg.small_context_frac)
            loss, correct, n = self._train_step(task, loop.gen)
            meta["step"] += 1
            self.steps_this_call += 1
            meta["tasks_seen"] += int(task[0].shape[1]) * self.world
            if self.step_hook is not None:
                self.step_hook(self, task)
            self._log_window(loop, s_idx, loss, correct, n)
            meta["train_seconds"] += from_rank0(time.time() - t_step, self.dist, self.device)  # process 0's clock
            loop.bar.update(int(self.spent()) - loop.bar.n)
            self._evaluate_if_due(loop)
        loop.close()
        return self._end_call(t_start, final_call)

    # -- the steps of run ----------------------------------------------------------------------------------
    def _set_budget(self, budget: float, *, final_call: bool, wall_left_s: float) -> None:
        """Set :attr:`budget`; in a final call, to what ``wall_left_s`` leaves after the periodic evaluations."""
        cfg, meta = self.cfg, self.meta
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget!r}")
        if not final_call and meta["calls"][:-1] and budget <= self.spent():
            raise ValueError(f"the budget ({budget:g}) is already spent by the resumed state (it trained "
                             f"{self.spent():g}): pass the run's own budget (--time-budget-min), or --final-call "
                             "to end it in this call")
        self.budget = float(budget)
        if final_call:
            if cfg.clock != "time":
                raise ValueError("final_call needs the time clock")
            eval_cost = max([e.get("seconds", e.get("eval_seconds", 0)) + 3 for e in meta["evals"]] or [20.0])
            n_evals = int(wall_left_s // (cfg.eval_every + eval_cost))
            self.budget = meta["train_seconds"] + max(0.0, wall_left_s - n_evals * eval_cost - 5.0)
            # process 0 alone evaluates (and measured what that costs): its plan is every process's
            self.budget = from_rank0(self.budget, self.dist, self.device)
            self.log(f"final call: time budget reset to {self.budget / 60:.2f} training minutes")
        meta["time_budget_s" if cfg.clock == "time" else "step_budget"] = self.budget

    def _progress_bar(self):
        from tqdm import tqdm

        return tqdm(total=int(self.budget), initial=int(self.spent()), unit="s" if self.cfg.clock == "time" else "step",
                    disable=not self.progress_bar, desc="train", mininterval=5)

    def _should_stop(self, t_start: float, wall_s: float, max_steps: int) -> bool:
        """Whether this call stops now: budget spent, ``wall_s`` seconds since ``t_start`` or ``max_steps`` taken.

        Every process stops where process 0 does.
        """
        wall = time.time() - t_start > wall_s
        stop = self.progress() >= 1.0 or wall or bool(max_steps and self.steps_this_call >= max_steps)
        if from_rank0(float(stop), self.dist, self.device):
            if wall:
                self.log("wall limit reached; saving state for --resume")
            return True
        return False

    def _enter_stage(self, loop: _CallLoop) -> int:
        """The curriculum stage in force; at a change (or a call's start) its prior stream replaces the last one."""
        cfg, meta = self.cfg, self.meta
        s_idx = stage_index(cfg.curriculum, self.progress())
        if s_idx != loop.stage:
            loop.stage = s_idx
            if loop.it is not None:
                loop.it.close()
            it, (loop.index, loop.batch), loop.reuse_left = self._open_stream(s_idx)
            loop.it = _Prefetch(it, enabled=bool(cfg.max_reuse) and cfg.workers > 0)
            self.log(f"stage {s_idx}: {cfg.curriculum[s_idx]} at step {meta['step']} "
                     f"(data wait so far {self.data_wait:.1f}s of {meta['train_seconds']:.0f}s)")
        return s_idx

    def _next_batch(self, loop: _CallLoop, stage: dict):
        """(the prior batch of this step, whether it is used for the first time).

        A batch is used ``max(stage["reuse"], cfg.min_reuse)`` times; with ``cfg.max_reuse`` once more (up to
        ``max_reuse`` uses in all) whenever the next batch is not ready yet, instead of waiting for it.
        With per-batch seeding, ``meta["prior_cursor"]`` records which batches have been drawn
        (:func:`_mark_drawn`), the uses left of the batch in use and, when it is not the highest-numbered
        batch below ``next_batch``, its index (``in_use``).
        """
        cfg, meta = self.cfg, self.meta
        if (loop.reuse_left == 0 and cfg.max_reuse and loop.batch is not None and loop.uses < cfg.max_reuse
                and not loop.it.ready()):
            loop.reuse_left = 1  # the next batch is not ready: one more use of this one instead of waiting
        fresh = loop.reuse_left == 0
        if fresh:
            t0 = time.time()
            item = next(loop.it)
            loop.index, loop.batch = item if cfg.seeding == "per_batch" else (None, item)
            loop.uses = 0
            meta["prior_tables"] = meta.get("prior_tables", 0) + int(loop.batch[0].shape[0]) * self.world
            self.data_wait += time.time() - t0
            loop.reuse_left = max(stage["reuse"], cfg.min_reuse)
            if cfg.seeding == "per_batch":
                _mark_drawn(meta["prior_cursor"], loop.index)
        loop.reuse_left -= 1
        loop.uses += 1
        if cfg.seeding == "per_batch":
            cursor = meta["prior_cursor"]
            cursor["reuse_left"] = loop.reuse_left
            cursor.pop("in_use", None)
            if loop.index != cursor["next_batch"] - 1:
                cursor["in_use"] = loop.index
        return loop.batch, fresh

    def _log_window(self, loop: _CallLoop, s_idx: int, loss, correct, n) -> None:
        """Add a step to the logging window; every 25 steps, a row of ``meta["loss_curve"]`` and a progress line.

        The window's sums stay on the device and are read once per window: a read of each step's loss made the host
        wait for the device at the end of every step, so the next step's host work (the task, the launches) could
        not overlap the device's work on this one."""
        meta = self.meta
        stats = torch.stack([loss.detach().float(), correct.float() / n.clamp(min=1).float()])
        loop.log_sums = stats if loop.log_sums is None else loop.log_sums + stats
        loop.log_n += 1
        if loop.log_n < 25:
            return
        mean_loss, mean_acc = (loop.log_sums.double() / loop.log_n).tolist()
        meta["loss_curve"].append([meta["step"], round(meta["train_seconds"] / 60, 3), s_idx,
                                   round(mean_loss, 4), round(mean_acc, 4)])
        loop.bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{mean_acc:.3f}", stage=s_idx, lr=f"{self._last_lr:.1e}")
        if not self.progress_bar and meta["step"] % 200 == 0:
            self.log(f"step {meta['step']} t={meta['train_seconds'] / 60:.2f}min stage {s_idx} "
                     f"lr {self._last_lr:.2e} loss {mean_loss:.4f} acc {mean_acc:.4f} "
                     f"data_wait {self.data_wait:.0f}s")
        loop.log_sums, loop.log_n = None, 0

    def _evaluate_if_due(self, loop: _CallLoop) -> None:
        """Evaluate and save the state (process 0) every ``cfg.eval_every`` seconds (time clock) or steps."""
        cfg, meta = self.cfg, self.meta
        due = self.evaluator is not None and (
            time.time() - loop.last_eval_time > cfg.eval_every if cfg.clock == "time"
            else meta["step"] - loop.last_eval_step >= cfg.eval_every)
        if from_rank0(float(due), self.dist, self.device):
            if self.rank == 0:
                self._timed_evaluation("periodic")
            barrier(self.dist)
            loop.last_eval_time, loop.last_eval_step = time.time(), meta["step"]

    def _timed_evaluation(self, tag: str) -> None:
        """Evaluate and save the state; the seconds both took go into the evaluation's record (``seconds``)."""
        t0 = time.time()
        ev = self.evaluate(tag)
        self.save()
        ev["seconds"] = round(time.time() - t0, 2)

    def _end_call(self, t_start: float, final_call: bool) -> bool:
        """Record the call (steps, data wait, wall time), evaluate and save at its end; whether the run is done."""
        meta = self.meta
        meta["calls"][-1].update({"steps": self.steps_this_call, "data_wait_s": round(self.data_wait, 1),
                                  "wall_s": round(time.time() - t_start, 1)})
        if not self.cfg.in_order:
            meta["calls"][-1]["prior_in_order"] = False  # batches delivered as they were ready
        if self.world > 1:
            waits = all_gather(round(self.data_wait, 1), self.dist)
            meta["calls"][-1].update(world_size=self.world, data_wait_s_per_rank=waits)
        self.log(f"call done: {self.steps_this_call} steps, data wait {self.data_wait:.1f}s, total step {meta['step']}")
        done = self.progress() >= 1.0 or final_call
        if self.evaluator is not None and self.rank == 0:
            if meta["evals"] and meta["evals"][-1]["step"] == meta["step"]:
                meta["evals"][-1]["tag"] = "final" if done else "end_of_call"
            else:
                self.evaluate("final" if done else "end_of_call")
            self.save()
            self.ckpt_eval.unlink(missing_ok=True)
        barrier(self.dist)
        return done

    def _open_stream(self, s_idx: int):
        """(prior stream of stage ``s_idx``, (index, batch) in use, its uses left) at a stage change or a call's start.

        With per-batch seeding the stream draws exactly the batches of the stage not drawn yet (by the cursor
        in ``meta["prior_cursor"]``), and a batch left with uses at the end of the last call is generated again.
        """
        cfg = self.cfg
        stage = cfg.curriculum[s_idx]
        prior = stage_prior(cfg, stage)
        if cfg.seeding == "per_call":
            it = prior_stream(stage, prior, workers=cfg.workers, worker_nice=cfg.worker_nice,
                              seed_base=cfg.seed * 100_003 + self.call_index * 101 + s_idx + 1_000_003 * self.rank)
            return it, (None, None), 0
        cursor = self.meta.setdefault("prior_cursor", {"stage": s_idx, "next_batch": 0, "reuse_left": 0})
        if cursor["stage"] != s_idx:
            cursor.clear()
            cursor.update(stage=s_idx, next_batch=0, reuse_left=0)
        key = (cfg.seed, self.rank, s_idx)
        it = prior_stream(stage, prior, workers=cfg.workers, key=key, start=cursor["next_batch"],
                          skip=cursor.get("drawn_above", ()), in_order=cfg.in_order, worker_nice=cfg.worker_nice)
        if cursor["reuse_left"] == 0:
            return it, (None, None), 0
        # resumed while a batch was being reused: generate it again (here) and use it for the uses it had left
        index = cursor.get("in_use", cursor["next_batch"] - 1)
        t0 = time.time()
        batch = prior_batch(stage, prior, key, index)
        self.data_wait += time.time() - t0
        return it, (index, batch), cursor["reuse_left"]

    def _train_step(self, task, gen):
        cfg, meta = self.cfg, self.meta
        progress = self.progress()
        for opt, base_lrs in self.optimizers:
            for g, base in zip(opt.param_groups, base_lrs):
                g["lr"] = lr_at(base, meta["step"], progress, warmup_steps=cfg.warmup_steps,
                                min_lr_frac=cfg.min_lr_frac, decay_frac=cfg.decay_frac)
        self._last_lr = self.optimizers[0][0].param_groups[0]["lr"]
        if cfg.random_column_embeddings:
            self.model.seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        loss, correct, n = forward_loss(self.ddp or self.model, task, self.autocast)
        if cfg.random_column_embeddings:
            self.model.seed = self.model_config.seed  # evaluation and export use the seed tabpfn uses at inference
        optimise(self.model, self.optimizers, loss, cfg.grad_clip)
        if self.ema is not None:
            self._update_ema()
        return loss, correct, n

    # -- export --------------------------------------------------------------------------------------------
    def write_checkpoint(self, path, state_dict=None) -> Path:
        """Write ``state_dict`` (default: the current weights) as a checkpoint that ``tabpfn`` loads, declaring
        :data:`.checkpoints.FALLBACK_INFERENCE_OVERRIDES`; :meth:`export` writes the chosen weights with it, and
        the command line also the last ones (``--export-last``) when the selection chose others."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tm.build_checkpoint(
            self.model_config,
            self.evaluated_state_dict() if state_dict is None else state_dict,
            path,
            extra={"ttt_book": {"trained_steps": self.meta["step"], "prior": run_priors(self.cfg)}},
            inference_config=tm.FALLBACK_INFERENCE_OVERRIDES,
        )
        return path

    def export(self, export_dir, *, baselines: dict | None = None, baseline_means: dict | None = None,
               state_dict=None, extra_results: dict | None = None, extra: dict | None = None) -> Path:
        """Write ``tabpfn_fallback.ckpt`` and its provenance ``tabpfn_fallback.json`` into ``export_dir``.

        The checkpoint holds ``state_dict`` (default: the current weights) and declares
        :data:`.checkpoints.FALLBACK_INFERENCE_OVERRIDES`; the JSON records the commands of every call, the
        seeds, the configuration, the loss curve, the evaluations and the package versions
        (:func:`ttt_helpers.provenance.write_provenance`). The last evaluation gives the headline numbers.
        """
        from ...provenance import write_provenance

        cfg, meta = self.cfg, self.meta
        export_dir = Path(export_dir)
        ckpt = self.write_checkpoint(export_dir / tm.FALLBACK_NAME, state_dict)
        ev = meta["evals"][-1] if meta["evals"] else {}
        results = {
            "n_parameters": self.n_params,
            "steps": meta["step"],
            "tasks_seen": meta["tasks_seen"],
            "train_minutes": round(meta["train_seconds"] / 60, 2),
            "final_val_loss": ev.get("val_loss"),
            "final_val_acc": ev.get("val_acc"),
            "real_table_accuracy": ev.get("real"),
            "real_table_mean": ev.get("real_mean"),
            "baselines": baselines or {},
            "baseline_means": baseline_means or {},
        }
        results.update(extra_results or {})
        record_extra = {
            "description": f"TabPFN-{cfg.architecture}-architecture classifier pretrained by us on the prior "
            f"{run_priors(cfg)!r} (pretrain.make_prior)" + (f", warm-started from {cfg.init_from}" if cfg.init_from else "")
            + "; NOT the official TabPFN weights",
            "config": self._provenance_config(),
            "calls": meta["calls"],
            "loss_curve_columns": ["step", "train_minutes", "stage", "train_loss", "train_acc"],
            "loss_curve": meta["loss_curve"],
            "evals": meta["evals"],
            "versions": _versions(),
        }
        record_extra["pretrain_config"] = dataclasses.asdict(cfg)
        if "init_from" in meta:
            record_extra["init_from"] = meta["init_from"]
        record_extra.update(extra or {})
        write_provenance(
            export_dir / (Path(tm.FALLBACK_NAME).stem + ".json"),
            command=" && ".join(c["command"] for c in meta["calls"]),
            seeds={"seed": cfg.seed, "val_seed": 10_000 + cfg.seed, "split_seed": cfg.seed},
            results=results,
            files=[ckpt],
            extra=record_extra,
            commit=meta["calls"][-1].get("git_commit"),  # a call that started before the field: detected now
        )
        self.log(f"exported {ckpt} and its provenance to {export_dir}")
        return ckpt

    def _provenance_config(self) -> dict:
        """The ``config`` of the provenance record: model, optimiser, prior, inference overrides, budget."""
        cfg = self.cfg
        model_cfg = {k: getattr(self.model_config, k) for k in ("emsize", "nlayers", "nhead", "features_per_group",
                                                                  "max_num_classes")}
        optimizer = {
            "name": "AdamW" if cfg.optimizer == "adamw" else "Muon (blocks' 2-D weights) + AdamW (the rest)",
            "lr": cfg.lr,
            "betas": [0.9, 0.95],
            "weight_decay": cfg.weight_decay,
            "warmup_steps": cfg.warmup_steps,
            "schedule": f"linear warm-up, then the peak until 1 - decay_frac of the training "
                        f"{'time' if cfg.clock == 'time' else 'steps'}, then cosine to min_lr_frac",
            "min_lr_frac": cfg.min_lr_frac,
            "decay_frac": cfg.decay_frac,
            "grad_clip": cfg.grad_clip,
            "autocast": "bf16" if self.autocast else "none (float32)",
            "sdpa": cfg.sdpa,
        }
        if cfg.architecture != "v2":
            model_cfg.update(architecture=cfg.architecture, num_thinking_rows=cfg.num_thinking_rows)
        if cfg.optimizer == "muon":
            optimizer.update(muon_lr=cfg.muon_lr, muon=("BatchedMuon" if cfg.muon_batched else "torch.optim.Muon")
                             + "(momentum=0.95, nesterov, 5 Newton-Schulz steps, adjust_lr_fn='match_rms_adamw', "
                             "no weight decay)")
        budget_key = "time_budget_min" if cfg.clock == "time" else "step_budget"
        return {
            "model": model_cfg,
            "optimizer": optimizer,
            "prior": {"package": "tabicl", "prior_type": cfg.prior, "curriculum": cfg.curriculum},
            "inference_overrides": tm.FALLBACK_INFERENCE_OVERRIDES,
            budget_key: round(self.budget / 60, 3) if cfg.clock == "time" else self.budget,
        }


def configure_host(device) -> None:
    """The process-wide torch settings of training on ``device``: on a GPU, TF32 matrix products and **one CPU
    thread** for torch's own operators; on the CPU, nothing changes (there the threads do the arithmetic).

    On a GPU the loop's CPU operators are tiny (a batch's task, the optimisers' bookkeeping), but torch runs them on
    a pool of one thread per core, cores that the prior's workers keep busy (in our reading of the profiles, each
    operator waits until all its threads are scheduled). On one H100 with 15 workers one thread took
    ``v2.6-fast``'s loop from 93 to 54-57 ms a step, and moving a batch to the device from 18 to 2 ms
    (``scripts/step_profile.py``; the pretraining appendix). What a step computes does not depend on it.
    """
    if torch.device(device).type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_num_threads(1)


def optimise(model, optimizers, loss, grad_clip: float) -> None:
    """One step of every optimiser of ``optimizers`` (``(optimiser, base learning rates)`` pairs) on ``loss``:
    gradients zeroed, back-propagated, clipped to ``grad_clip`` in global norm. The step of
    :meth:`Trainer._train_step`, and of ``scripts/step_profile.py``'s timings."""
    for opt, _ in optimizers:
        opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for opt, _ in optimizers:
        opt.step()


def _mark_drawn(cursor: dict, index: int) -> None:
    """Record in a per-batch ``cursor`` that batch ``index`` has been drawn.

    ``cursor["next_batch"]`` is the lowest index not drawn yet and ``cursor["drawn_above"]`` the sorted indexes
    above it that have been drawn (absent when none: always so when batches come in index order).
    """
    above = set(cursor.get("drawn_above", ()))
    if index < cursor["next_batch"] or index in above:
        raise RuntimeError(f"prior batch {index} drawn twice (cursor {cursor})")
    above.add(index)
    while cursor["next_batch"] in above:
        above.remove(cursor["next_batch"])
        cursor["next_batch"] += 1
    cursor.pop("drawn_above", None)
    if above:
        cursor["drawn_above"] = sorted(above)


def _usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the platform tells it; else ``os.cpu_count()``)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("tabpfn", "tabicl", "xgboost", "torch", "numpy", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out
