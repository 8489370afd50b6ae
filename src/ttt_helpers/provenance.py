"""Provenance of shipped results and models, and sha256-checked loading.

Every file shipped under ``data/`` (a result table or a model) has a JSON file beside it, written by
:func:`write_provenance`, that records the command, the git commit, the machine, the date, the seeds and
the headline numbers; for binary files it also records their sha256, which :func:`verify_sha256` checks
when the file is loaded.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path

__all__ = [
    "command_line",
    "repo_root",
    "data_dir",
    "results_dir",
    "models_dir",
    "sha256_file",
    "machine_description",
    "cpu_model",
    "git_commit",
    "write_provenance",
    "write_result",
    "read_provenance",
    "verify_sha256",
    "load_json_result",
    "provenance_table",
    "ShippedResult",
    "show_shipped",
]


def repo_root() -> Path:
    """The repository root: ``$TTT_BOOK_ROOT`` if set, else the folder above ``src/`` of this package."""
    env = os.environ.get("TTT_BOOK_ROOT")
    if env:
        return Path(env).resolve()
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").exists() and (parent / "data").is_dir():
            return parent
    return Path.cwd()


def data_dir() -> Path:
    """The ``data/`` folder of the repository (override with ``$TTT_BOOK_DATA``)."""
    env = os.environ.get("TTT_BOOK_DATA")
    return Path(env).resolve() if env else repo_root() / "data"


def results_dir() -> Path:
    """``data/results``: shipped result tables (JSON/CSV) with provenance."""
    return data_dir() / "results"


def models_dir() -> Path:
    """``data/models``: shipped model files with provenance."""
    return data_dir() / "models"


def sha256_file(path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_commit(cwd=None) -> str:
    """The current git commit (with ``+dirty`` if the tree has changes), or ``"unknown"``.

    The environment variable ``TTT_GIT_COMMIT``, when set, is returned instead: the GPU machine receives the
    working tree of a commit but keeps the ``.git`` of the session's first commit, so a run there names the
    commit it was sent from in its command (``TTT_GIT_COMMIT=<sha> python scripts/...``).
    """
    if os.environ.get("TTT_GIT_COMMIT"):
        return os.environ["TTT_GIT_COMMIT"]
    cwd = cwd or repo_root()
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def cpu_model() -> str:
    """The processor's model name (``/proc/cpuinfo`` on Linux, else ``platform.processor()``), or ``"unknown"``.

    Recorded with a run's machine: two machines of one GPU model can differ in step time by their host CPU."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description() -> dict:
    """Platform, processor model and count, Python/torch versions and the accelerator (if any)."""
    desc = {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
    try:
        import torch

        desc["torch"] = torch.__version__
        if torch.cuda.is_available():
            desc["accelerator"] = torch.cuda.get_device_name(0)
            desc["accelerator_count"] = torch.cuda.device_count()
        else:
            desc["accelerator"] = "none (CPU)"
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return desc


def command_line(argv=None) -> str:
    """The command that started this script, as one shell line: ``python <script> <arguments>``.

    ``argv`` is what the script's ``main(argv)`` was given (``None``: the process's own arguments), so a
    script run from a test records the arguments the test passed.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    return "python " + " ".join(shlex.quote(str(a)) for a in [sys.argv[0], *args])


def write_provenance(path, *, command: str, seeds=None, results=None, files=(), extra=None, commit=None) -> dict:
    """Write a provenance JSON file.

    Parameters
    ----------
    path : path-like
        Where to write the JSON (by convention ``<result>.provenance.json`` or ``<model>.json``).
    command : str
        The exact command that produced the result.
    seeds : list or dict, optional
    results : dict, optional
        Headline numbers.
    files : iterable of path-like
        Files whose sha256 is recorded (stored by file name, relative to the JSON's folder).
    extra : dict, optional
        Anything else worth recording (configuration, timings, throughput).
    commit : str, optional
        The git commit; detected if omitted.

    Returns
    -------
    dict
        What was written.
    """
    path = Path(path)
    record = {
        "command": command,
        "git_commit": commit or git_commit(),
        "machine": machine_description(),
        "date_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seeds": seeds,
        "results": results or {},
        "files": {Path(f).name: sha256_file(f) for f in files},
    }
    if extra:
        record.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2, sort_keys=False, default=_json_default) + "\n")
    return record


def write_result(out, name: str, result: dict, *, command: str, commit=None, seeds=None, results=None) -> Path:
    """Write a script's ``result`` as ``<out>/<name>.json`` and its provenance beside it (``<name>.provenance.json``:
    the command, the commit, the machine, the date, ``seeds``, the headline ``results``, the file's sha256 and the
    result's ``"seconds"`` as ``wall_seconds``). Returns the result's path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(result, indent=1, default=_json_default) + "\n")
    write_provenance(out / f"{name}.provenance.json", command=command, commit=commit, seeds=seeds, results=results,
                     files=[path], extra={"wall_seconds": result.get("seconds")})
    return path


def _json_default(obj):
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    return str(obj)


def read_provenance(path) -> dict:
    """Read a provenance JSON file."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"provenance file not found: {path}")
    return json.loads(path.read_text())


def verify_sha256(file, provenance_path=None) -> str:
    """Check a shipped file's sha256 against its provenance record; return the hash.

    Raises
    ------
    ValueError
        If the file is not listed in the provenance or its hash differs (a corrupted or replaced file,
        or a Git LFS pointer instead of the real file).
    """
    file = Path(file)
    provenance_path = Path(provenance_path) if provenance_path else file.with_suffix(".json")
    record = read_provenance(provenance_path)
    expected = record.get("files", {}).get(file.name)
    if expected is None:
        raise ValueError(f"{provenance_path} records no sha256 for {file.name}")
    actual = sha256_file(file)
    if actual != expected:
        raise ValueError(
            f"sha256 mismatch for {file}: expected {expected} (from {provenance_path.name}), got {actual}"
        )
    return actual


def load_json_result(name: str) -> dict:
    """Load ``data/results/<name>.json`` (a shipped result table written with provenance)."""
    path = results_dir() / (name if name.endswith(".json") else name + ".json")
    if not path.exists():
        raise FileNotFoundError(f"no shipped result {path}; run the script named in the chapter to create it")
    return json.loads(path.read_text())


def provenance_table(root=None):
    """Rows describing every provenance JSON under ``data/`` (for the reproducibility appendix).

    A provenance JSON is any ``*.json`` file under ``data/`` with a ``"command"`` key. Each row holds the
    file (relative to ``data/``), the command, commit, accelerator, date, and whether the sha256 of every
    file it lists matches (``None`` when it lists no file).

    Returns
    -------
    list of dict
    """
    root = Path(root) if root else data_dir()
    rows = []
    for path in sorted(root.rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(record, dict) or "command" not in record:
            continue
        checks = []
        for name, expected in (record.get("files") or {}).items():
            target = path.parent / name
            checks.append(target.exists() and sha256_file(target) == expected)
        machine = record.get("machine") or {}
        rows.append(
            {
                "file": str(path.relative_to(root)),
                "command": record["command"],
                "git_commit": str(record.get("git_commit", "unknown"))[:12],
                "machine": machine.get("accelerator", machine.get("platform", "?")),
                "date_utc": record.get("date_utc", "?"),
                "sha256_ok": (all(checks) if checks else None),
            }
        )
    return rows


class ShippedResult(dict):
    """A shipped result (the parsed JSON) with its provenance record in ``.provenance``.

    Its repr names the keys only, so that a notebook cell ending in :func:`show_shipped` does not print the
    whole table.
    """

    provenance: dict

    def __repr__(self) -> str:
        return f"<shipped result with keys {', '.join(map(str, self))}>"

    def _repr_pretty_(self, printer, cycle) -> None:
        printer.text(repr(self))


def _machine_line(machine: dict) -> str:
    accelerator = machine.get("accelerator")
    cpus = f"{machine['cpu_count']} CPUs" if machine.get("cpu_count") else "CPU"
    if accelerator and accelerator != "none (CPU)":
        count = machine.get("accelerator_count", 1)
        return f"{count} x {accelerator}" if count and count > 1 else accelerator
    return f"{cpus} ({machine.get('platform', 'unknown platform')})" if machine else "unknown machine"


def _wall_seconds(record: dict):
    for key in ("wall_seconds", "elapsed_s"):
        if isinstance(record.get(key), (int, float)):
            return record[key]
    return None


def show_shipped(name: str):
    """Check, describe and load a shipped result or model: the one call a chapter makes for provenance.

    ``name`` is either a result, ``data/results/<name>.json`` with ``<name>.provenance.json`` beside it, a
    model file under ``data/models`` (``"gpt2_icl.pt"``) with ``<stem>.json`` beside it, or another data file given
    by its path under ``data/`` (``"own_data/political_information.csv"``) with ``<stem>.json`` beside it. The file's sha256 is
    checked against its provenance record, and three lines are printed: the file, the command that made it,
    and the commit, date, machine and wall time. Everything printed comes from the provenance file, so the
    output is the same on every machine.

    Returns
    -------
    ShippedResult or dict
        For a result, the parsed JSON (a ``dict``) with the provenance record in ``.provenance``; for a
        model or another data file, the provenance record.

    Raises
    ------
    FileNotFoundError
        If there is no such shipped file or no provenance beside it.
    ValueError
        If the file's sha256 differs from the recorded one (or none is recorded).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    stem = name[:-5] if name.endswith(".json") else name
    result_path = results_dir() / f"{stem}.json"
    model_path = models_dir() / name
    data_path = data_dir() / name
    if result_path.exists():
        file, prov_path, kind = result_path, results_dir() / f"{stem}.provenance.json", "result"
    elif Path(name).suffix and model_path.exists() and model_path.suffix != ".json":
        file, prov_path, kind = model_path, model_path.with_suffix(".json"), "model"
    elif "/" in name and Path(name).suffix not in ("", ".json") and data_path.is_file():
        file, prov_path, kind = data_path, data_path.with_suffix(".json"), "data"
    else:
        raise FileNotFoundError(
            f"no shipped result {result_path}, model {model_path} or data file {data_path}; run the script named in "
            "the chapter to create it"
        )
    record = read_provenance(prov_path)
    verify_sha256(file, prov_path)
    wall = _wall_seconds(record)
    date = str(record.get("date_utc", "unknown date"))[:10]
    commit = str(record.get("git_commit", "unknown"))
    commit = commit[:12] + ("+dirty" if commit.endswith("+dirty") else "")
    print(f"shipped {kind} data/{file.relative_to(data_dir()).as_posix()} (sha256 matches {prov_path.name})")
    print(f"  made by: {record.get('command', 'unknown command')}")
    print(f"  commit {commit}, {date}, on {_machine_line(record.get('machine') or {})}"
          + (f", wall time {wall:.0f} s" if wall is not None else ""))
    if kind != "result":
        return record
    result = ShippedResult(json.loads(file.read_text()))
    result.provenance = record
    return result
