"""`fairbench tune`: one study per method, N trials each, scored on validation only.

The protocol is DomainBed's (Gulrajani & Lopez-Paz, ICLR 2021): every method gets the same number
of trials, drawn from the distribution it declares (`fairbench.methods.space`), and each method's
trial with the best validation criterion is selected; nothing is chosen on test data.

- **Draws.** Trial 0 of every study is the method's defaults (the paper's values and the
  protocol's lr and weight decay, as DomainBed's hyperparameter seed 0 is its defaults); trials
  1..N-1 are random draws. Each draw comes from Optuna's `RandomSampler` seeded by the study's
  ``--tune-seed``, the method and the trial number, so a draw never depends on how many trials
  were drawn before it, in this process or another: the same command prints the same draws, and an
  interrupted study resumes without redrawing. The study lives in Optuna's journal file
  (``<out>/study.journal``, file-locked, so the Slurm tasks' folder can hold it); it records the
  space, N, the seed and the run options, and a change of any of them is refused.
- **Trials** are `fairbench run` commands launched through the sweep's launchers (`fairbench.sweep.launch`:
  local pool or Slurm; done trials skipped, stopped ones resumed). Each trains at the protocol
  (seed 0) with ``--score-on validation``: it logs every epoch's validation score and writes
  validation.json, and never loads the test set.
- **Selection**: the criterion is `fairbench.schema.validation.RULE` (validation average +
  worst-class robust accuracy). ``trials.csv`` holds one row per finished trial; ``selected`` is 1
  for the best trial of each method whose N trials are all finished (ties: the lower trial number).
  A trial whose training diverged is finished with no score (empty accuracy and criterion cells;
  its validation.json says where), counts among the N, and is never selected.
"""

from __future__ import annotations

import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from fairbench.errors import FairbenchError
from fairbench.methods.space import RUN_KEYS, Choice, Distribution, LogUniform, check_space, method_space
from fairbench.schema.validation import VALIDATION_FILE, is_diverged, read_validation

STUDY_FILE = "study.journal"
LOCK_FILE = "study.lock"
TRIALS_FILE = "trials.csv"
MAX_TRIALS = 1000
# `fairbench run` options a study sets itself, with what to use instead
OWN_OPTIONS = {
    "method": "--methods",
    "seed": "nothing (a trial trains at seed 0)",
    "run_id": "nothing",
    "resume": "nothing (a study resumes its stopped trials by itself)",
    "stop_after_epoch": "a plain `fairbench run`",
    "score_on": "nothing (trials score on validation)",
    "tuning": "nothing",
    "param": "the method's search space (`fairbench list`)",
}

# parse_run(argv) -> (RunConfig, {option: given?}): `fairbench run`'s own parser (from the CLI)
ParseRun = Callable[[list[str]], "tuple[Any, dict[str, bool]]"]


@dataclass(frozen=True)
class TrialSpec:
    """One trial: its method, number, drawn values (the space's keys) and run folder name."""

    method: str
    number: int
    values: dict[str, Any]

    @property
    def run_id(self) -> str:
        return f"{self.method}_trial{self.number:02d}"

    @property
    def is_default(self) -> bool:
        return self.number == 0


@dataclass(frozen=True)
class StudySpec:
    """What defines a study: its name, trial count, seed, methods and the run options shared by all."""

    name: str
    trials: int
    seed: int
    methods: tuple[str, ...]
    run_args: tuple[str, ...]
    out: str
    # a study that fine-tunes another method's tuned row of the same study (FAAL: pgd-at); `tuned_sources`
    init_from_tuned: str | None = None

    def check(self) -> None:
        if not 1 <= self.trials <= MAX_TRIALS:
            raise FairbenchError(f"--trials must be in [1, {MAX_TRIALS}], got {self.trials}")
        if not self.methods:
            raise FairbenchError("--methods names no method")
        if len(set(self.methods)) != len(self.methods):
            raise FairbenchError(f"--methods names a method twice: {','.join(self.methods)}")
        if not (0 < len(self.name) <= 100 and all(c.isalnum() or c in "._-+=" for c in self.name)):
            raise FairbenchError(f"--study must be a short name (letters, digits, . _ - + =), got {self.name!r:.60}")
        if self.init_from_tuned is not None and self.init_from_tuned in self.methods:
            raise FairbenchError(
                f"--init-from-tuned {self.init_from_tuned}: {self.init_from_tuned} is tuned in this command; "
                f"tune it in a command of its own first (the methods that fine-tune it need its selected trial)"
            )


# ----------------------------------------------------------------------------------- spaces


def resolve_space(method: str, base_cfg: Any) -> tuple[dict[str, Distribution], dict[str, Any]]:
    """The method's whole space and its defaults at this protocol (``base_cfg``: the run options
    without the space's values), checked; one clear error for a method without a space."""
    from fairbench.methods import METHODS

    cls = METHODS.get(method)
    space = method_space(cls)
    if space is None:
        raise FairbenchError(
            f"method '{method}' declares no search space, so `fairbench tune` cannot tune "
            f"it (it runs with `fairbench run`); add `space = {{...}}` beside its Params "
            f"(CONTRIBUTING.md)"
        )
    params = cls.Params()
    run_defaults = {k: getattr(base_cfg, k) for k in RUN_KEYS}
    check_space(method, space, params, run_defaults)
    defaults = {k: (run_defaults[k] if k in RUN_KEYS else getattr(params, k)) for k in space}
    return space, defaults


def _optuna_distribution(dist: Distribution) -> Any:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(dist, Choice):
        return CategoricalDistribution(list(dist.values))
    log = isinstance(dist, LogUniform)
    if dist.integer:
        return IntDistribution(int(dist.low), int(dist.high), log=log)
    return FloatDistribution(float(dist.low), float(dist.high), log=log)


def trial_seed(seed: int, method: str, number: int) -> int:
    """The sampler seed of one draw: from the study's seed, the method and the trial number only."""
    digest = hashlib.sha256(f"{seed}/{method}/{number}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def space_signature(space: Mapping[str, Distribution]) -> list[list[str]]:
    return [[name, repr(dist)] for name, dist in space.items()]


# ----------------------------------------------------------------------------------- the study


def _storage(folder: Path | None) -> Any:
    import optuna

    if folder is None:
        return optuna.storages.InMemoryStorage()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    folder.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(str(folder / STUDY_FILE)))


def draw_trials(
    spec: StudySpec, method: str, space: dict[str, Distribution], defaults: dict[str, Any], persist: bool
) -> list[TrialSpec]:
    """The study's N trials of ``method``: read from its journal where drawn before, drawn (and
    recorded when ``persist``) where not; a dry run (``persist=False``) records nothing, and draws
    what is missing in memory, as the study would. A study started with another space, N, seed or
    run options is refused. Drawing holds ``<out>/study.lock``, so two commands never interleave."""
    folder = Path(spec.out)
    if not persist:
        return _draw(spec, method, space, defaults, folder if (folder / STUDY_FILE).is_file() else None, False)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise FairbenchError(
                f"another `fairbench tune` is drawing trials in {folder} right now; "
                f"run this command again when it has started its trials"
            ) from None
        return _draw(spec, method, space, defaults, folder, True)


def _draw(
    spec: StudySpec,
    method: str,
    space: dict[str, Distribution],
    defaults: dict[str, Any],
    folder: Path | None,
    persist: bool,
) -> list[TrialSpec]:
    import optuna
    from optuna.samplers import RandomSampler

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_name = f"{spec.name}/{method}"
    defines: dict[str, Any] = {
        "space": space_signature(space),
        "trials": spec.trials,
        "seed": spec.seed,
        "run_args": without_out(spec.run_args),
    }
    if spec.init_from_tuned is not None:  # only when set: the studies recorded before it keep their signature
        defines["init_from_tuned"] = spec.init_from_tuned
    signature = json.dumps(defines, sort_keys=True)
    study = None
    if folder is not None:
        try:
            study = optuna.load_study(study_name=study_name, storage=_storage(folder))
        except KeyError:
            study = None
    if study is not None and study.user_attrs.get("signature") != signature:
        assert folder is not None  # a study is only loaded from a folder
        raise FairbenchError(
            f"study '{study_name}' in {folder / STUDY_FILE} was started with another search "
            f"space, --trials, --tune-seed, --init-from-tuned or run options; its trials stay as they "
            f"are: start a new study with --study OTHER_NAME (or --out another folder)"
        )
    if study is None and persist:
        assert folder is not None
        study = optuna.create_study(
            study_name=study_name, storage=_storage(folder), direction="maximize", sampler=RandomSampler(seed=spec.seed)
        )
        study.set_user_attr("signature", signature)
    drawn = [] if study is None else sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    trials = [TrialSpec(method, t.number, _typed(dict(t.params), space)) for t in drawn[: spec.trials]]
    distributions = {k: _optuna_distribution(d) for k, d in space.items()}
    for number in range(len(trials), spec.trials):
        # a draw depends on (seed, method, number) only: in the study itself, or (a dry run) in a
        # study of its own in memory, it is the same draw
        where = study if persist else optuna.create_study(storage=_storage(None), direction="maximize")
        assert where is not None
        if number == 0:
            where.enqueue_trial(defaults, skip_if_exists=False)
        where.sampler = RandomSampler(seed=trial_seed(spec.seed, method, number))
        trial = where.ask(distributions)
        if persist and trial.number != number:
            raise FairbenchError(
                f"study '{study_name}': trial {number} was drawn as number {trial.number}; "
                f"another process wrote the journal {folder}/{STUDY_FILE} at the same time"
            )
        trials.append(TrialSpec(method, number, _typed(dict(trial.params), space)))
    return trials


def without_out(run_args: Sequence[str]) -> list[str]:
    """The run options that define a study's trials: all but --out (where the study lies, which may
    move: trials run in a scratch folder are committed to results/tuning)."""
    args, skip = [], False
    for a in run_args:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            args.append(a)
    return args


def _typed(values: dict[str, Any], space: Mapping[str, Distribution]) -> dict[str, Any]:
    """Optuna's values in the space's order, integers as int."""
    out = {}
    for name, dist in space.items():
        v = values[name]
        out[name] = int(v) if not isinstance(dist, Choice) and dist.integer else v
    return out


def record_results(spec: StudySpec, method: str, results: dict[int, float | None]) -> None:
    """Tell the study each finished trial's criterion, or that it failed (None: it diverged);
    idempotent."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name=f"{spec.name}/{method}", storage=_storage(Path(spec.out)))
    for trial in study.get_trials(deepcopy=False):
        if trial.number in results and trial.state == TrialState.RUNNING:
            value = results[trial.number]
            if value is None:
                study.tell(trial.number, state=TrialState.FAIL)
            else:
                study.tell(trial.number, value)


# ----------------------------------------------------------------------------------- runs


def format_value(value: Any) -> str:
    """A drawn value as `fairbench run` reads it back exactly (floats by repr)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def trial_argv(spec: StudySpec, trial: TrialSpec) -> list[str]:
    """The `fairbench run` arguments of one trial (the launcher adds --run-id and --resume)."""
    return run_argv(list(spec.run_args), trial, seed=0) + ["--score-on", "validation"]


def run_argv(run_args: list[str], trial: TrialSpec, seed: int) -> list[str]:
    """``run_args`` with the trial's method, seed and drawn values."""
    argv = run_args + ["--method", trial.method, "--seed", str(seed)]
    for name, value in trial.values.items():
        if name in RUN_KEYS:
            argv += [f"--{name.replace('_', '-')}", format_value(value)]
        else:
            argv += ["--param", f"{name}={format_value(value)}"]
    return argv


def plan_trials(spec: StudySpec, parse_run: ParseRun, persist: bool) -> tuple[list[Any], list[TrialSpec]]:
    """Every trial of the study as a sweep's `PlannedRun`, validated the way `fairbench run`
    validates one, before any starts; and the trials themselves."""
    from fairbench.sweep.plan import PlannedRun
    from fairbench.train.runner import prepare

    spec.check()
    base, given = parse_run(list(spec.run_args))
    for name, instead in OWN_OPTIONS.items():
        if given.get(name):
            raise FairbenchError(f"fairbench tune sets --{name.replace('_', '-')} itself; use {instead}")
    if base.val_per_class is None:
        raise FairbenchError(
            "tuning selects on the validation split: pass --val-per-class K "
            "(or a --preset that has one, e.g. fmnist-standard)"
        )
    source = tuned_sources(spec, [0], None)[0]  # a trial trains at seed 0
    runs, trials = [], []
    for method in spec.methods:
        space, defaults = resolve_space(method, dataclasses.replace(base, method=method))
        for trial in draw_trials(spec, method, space, defaults, persist):
            argv = trial_argv(spec, trial) + source
            cfg = prepare(parse_run(argv)[0])[0]
            runs.append(
                PlannedRun(
                    trial.run_id,
                    tuple(argv),
                    (("method", method), ("trial", str(trial.number))),
                    cfg.epochs,
                    spec.out,
                    cfg.device,
                )
            )
            trials.append(trial)
    return runs, trials


def describe_trials(trials: Sequence[TrialSpec]) -> str:
    """The draws, one line per trial (what --dry-run prints)."""
    lines = []
    for t in trials:
        values = " ".join(f"{k}={_short(v)}" for k, v in t.values.items())
        lines.append(f"{t.run_id:<24} {'(defaults) ' if t.is_default else ''}{values}")
    return "\n".join(lines)


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else format_value(v)


# ----------------------------------------------------------------------------------- trials.csv


def trial_rows(spec: StudySpec, trials: Sequence[TrialSpec]) -> list[dict[str, Any]]:
    """One row per finished trial, with ``selected`` set by `select`; unfinished trials are left
    out; a diverged trial's accuracies and criterion are None."""
    rows = []
    for t in trials:
        path = Path(spec.out) / "runs" / t.run_id / VALIDATION_FILE
        if not path.is_file():
            continue
        record = read_validation(path)
        if record["run_id"] != t.run_id or record["method"] != t.method:
            raise FairbenchError(f"{path}: its record names run {record['run_id']!r:.60}, not {t.run_id}")
        rows.append(
            {
                "method": t.method,
                "trial": t.number,
                "run_dir": f"runs/{t.run_id}",
                **{f"hp.{k}": v for k, v in t.values.items()},
                "val_avg_acc": None if is_diverged(record) else record["avg"],
                "val_worst_acc": None if is_diverged(record) else record["worst"],
                "criterion": None if is_diverged(record) else record["criterion"],
                "selected": 0,
            }
        )
    complete = {m for m in spec.methods if sum(1 for r in rows if r["method"] == m) == spec.trials}
    return select(rows, complete)


def select(rows: list[dict[str, Any]], complete: set[str]) -> list[dict[str, Any]]:
    """Mark the argmax of ``criterion`` of each method in ``complete`` (ties: the lowest trial);
    a trial without one (None: it diverged) is never selected."""
    out = [dict(r, selected=0) for r in rows]
    for method in complete:
        mine = [
            r for r in out if r["method"] == method and r["criterion"] is not None and math.isfinite(r["criterion"])
        ]
        if mine:
            best = max(mine, key=lambda r: (r["criterion"], -r["trial"]))
            best["selected"] = 1
    return out


FIXED_COLUMNS = ("method", "trial", "run_dir")
SCORE_COLUMNS = ("val_avg_acc", "val_worst_acc", "criterion", "selected")


def trials_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``method,trial,run_dir,hp.<name>...,val_avg_acc,val_worst_acc,criterion,selected``; the hp
    columns are every method's space keys (sorted), empty where a method has no such key."""
    hps = sorted({k for r in rows for k in r if k.startswith("hp.")})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*FIXED_COLUMNS, *hps, *SCORE_COLUMNS])
    for r in sorted(rows, key=lambda r: (r["method"], r["trial"])):
        writer.writerow(
            [*(r[c] for c in FIXED_COLUMNS), *(_cell(r.get(h)) for h in hps), *(_cell(r[c]) for c in SCORE_COLUMNS)]
        )
    return buf.getvalue()


def _cell(v: Any) -> str:
    return "" if v is None else format_value(v)


def study_trials(out: Path, name: str) -> tuple[list[TrialSpec], dict[str, int]]:
    """Every trial drawn so far in every method's study called ``name`` in ``out``'s journal, and
    each method's N (read back from the study's record)."""
    import optuna

    journal = Path(out) / STUDY_FILE
    if not journal.is_file():
        return [], {}
    storage = _storage(Path(out))
    trials, sizes = [], {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        study_name, _, method = summary.study_name.rpartition("/")
        if study_name != name:
            continue
        study = optuna.load_study(study_name=summary.study_name, storage=storage)
        try:
            sizes[method] = int(json.loads(study.user_attrs["signature"])["trials"])
        except (KeyError, ValueError, TypeError):
            raise FairbenchError(f"{journal}: study '{summary.study_name}' has no readable record") from None
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[: sizes[method]]:
            trials.append(TrialSpec(method, t.number, dict(t.params)))
    return trials, sizes


def write_trials_csv(out: Path, name: str) -> tuple[Path, list[dict[str, Any]]]:
    """Collect every finished trial of study ``name`` into ``out/trials.csv`` (atomically), tell
    the studies their criteria; returns the file and its rows."""
    from fairbench.runs.folder import atomic_write_text

    trials, sizes = study_trials(out, name)
    rows = []
    for method in sorted(sizes):
        mine = [t for t in trials if t.method == method]
        spec = StudySpec(name, sizes[method], 0, (method,), (), str(out))
        method_rows = trial_rows(spec, mine)
        rows += method_rows
        results = {r["trial"]: r["criterion"] for r in method_rows}
        if results:
            record_results(spec, method, results)
    path = Path(out) / TRIALS_FILE
    atomic_write_text(path, trials_csv(rows))
    return path, rows


# ----------------------------------------------------------------------------------- the tuned row

TUNED_RULE = "best-val"


def tuned_run_id(method: str, study: str, seed: int) -> str:
    return f"{method}_tuned-{study}_seed{seed}"


def control_run_id(method: str, source: str, study: str, seed: int) -> str:
    return f"{source}_control-{method}_tuned-{study}_seed{seed}"


def confirm_runs(
    spec: StudySpec,
    parse_run: ParseRun,
    seeds: Sequence[int],
    confirm_out: str,
    echo: Callable[[str], None],
    control: bool = False,
) -> tuple[list[Any], list[tuple[TrialSpec, Any]]]:
    """The tuned row of each method: its selected trial's configuration at each seed, scored on
    the test set in ``confirm_out`` (never in the trial's folder), each run recording its study
    (``--tuning``). Seed 0 is the selected trial itself, as DomainBed reports the selected run:
    `prepare_seed0` starts its folder from the trial's checkpoint. A method whose study has
    unfinished trials is refused by name.

    ``control`` (a study that fine-tunes, ``--init-from-tuned``): also the tuned row's control at
    each seed, the same fine-tuning (from the same run, with the selected trial's lr, weight decay
    and epochs) with the source method's own loss, so that the tuned row's gain can be told from
    the epochs it adds. Nothing of the control is tuned on its own: it is not a trial, and its seed
    0 trains (there is no trial of it to evaluate)."""
    from fairbench.sweep.plan import PlannedRun
    from fairbench.train.runner import prepare

    spec.check()
    if control and spec.init_from_tuned is None:
        raise FairbenchError(
            "--control runs the tuned control of a study that fine-tunes another method's tuned row; "
            "give --init-from-tuned METHOD too (faal: pgd-at)"
        )
    runs, seed0 = [], []
    args = without_out(spec.run_args) + ["--out", confirm_out]
    sources = tuned_sources(spec, seeds, confirm_out)  # the same for every method of the command

    def plan(run_id: str, trial: TrialSpec, seed: int, tuning: dict[str, Any]) -> Any:
        argv = run_argv(list(args), trial, seed) + sources[seed] + ["--tuning", json.dumps(tuning, sort_keys=True)]
        cfg = prepare(parse_run(argv)[0])[0]
        axes = (("method", trial.method), ("seed", str(seed)), ("trial", str(trial.number)))
        runs.append(PlannedRun(run_id, tuple(argv), axes, cfg.epochs, confirm_out, cfg.device))
        return cfg

    for method in spec.methods:
        trial, chosen = selected_trial(spec, method, "--confirm")
        tuning = {"study": spec.name, "trials": spec.trials, "trial": trial.number, "rule": TUNED_RULE}
        for seed in seeds:
            run_id = tuned_run_id(method, spec.name, seed)
            cfg = plan(run_id, trial, seed, tuning)
            if seed == 0:
                seed0.append((trial, dataclasses.replace(cfg, run_id=run_id)))
        echo(f"{method}: trial {trial.number} selected (criterion {chosen['criterion']:.4f})")
        if control:
            assert spec.init_from_tuned is not None  # checked above
            source = spec.init_from_tuned
            # every space holds TRAINING_SPACE's lr and weight decay, so this is never empty
            shared = {k: v for k, v in trial.values.items() if k in RUN_KEYS}
            twin = TrialSpec(source, trial.number, shared)
            for seed in seeds:
                plan(control_run_id(method, source, spec.name, seed), twin, seed, tuning | {"control_of": method})
            shown = ", ".join(f"{k}={_short(v)}" for k, v in shared.items())
            echo(f"{method}: its control fine-tunes with {source}'s loss ({shown})")
    return runs, seed0


def selected_trial(spec: StudySpec, method: str, where: str) -> tuple[TrialSpec, dict[str, Any]]:
    """The selected trial of ``method`` in study ``spec.name`` (in ``spec.out``) and its trials.csv
    row; one error, starting with ``where``, while its ``spec.trials`` trials are not all finished."""
    every, sizes = study_trials(Path(spec.out), spec.name)
    if method in sizes and sizes[method] != spec.trials:
        raise FairbenchError(
            f"{where}: the study of {method} in {spec.out} has {sizes[method]} trials, not --trials "
            f"{spec.trials} (every method of a study gets the same N)"
        )
    trials = [t for t in every if t.method == method]
    rows = trial_rows(dataclasses.replace(spec, methods=(method,)), trials)
    chosen = [r for r in rows if r["selected"]]
    if not chosen and len(rows) == spec.trials:
        raise FairbenchError(
            f"{where}: every one of the {spec.trials} trials of {method} diverged; there is nothing to select"
        )
    if not chosen:
        raise FairbenchError(
            f"{where}: the study of {method} has {len(rows)} of {spec.trials} trials finished in "
            f"{spec.out}; run that study to its end first (its tune command without --confirm)"
        )
    return next(t for t in trials if t.number == chosen[0]["trial"]), chosen[0]


def tuned_sources(spec: StudySpec, seeds: Sequence[int], confirm_out: str | None) -> dict[int, list[str]]:
    """The ``--init-from`` of the runs of a study that fine-tunes another method's tuned row
    (``--init-from-tuned``; FAAL fine-tunes pgd-at's), for each of ``seeds``: the tuned run of that
    method at the same seed. Seed 0 of a tuned row *is* its selected trial (`prepare_seed0`), so seed 0 (every
    trial, and the tuned row's seed 0) starts from the selected trial's folder, which exists before
    any tuned row does; seed s > 0 from that method's tuned run of seed s in ``confirm_out``, which
    `--confirm` of that method must have made first. Nothing for a study that trains from scratch."""
    method = spec.init_from_tuned
    if method is None:
        return {seed: [] for seed in seeds}
    from fairbench.methods import METHODS

    METHODS.get(method)  # an unknown name: one error listing the known ones
    if any(a == "--init-from" or a.startswith("--init-from=") for a in spec.run_args):
        raise FairbenchError("--init-from-tuned and --init-from both name the run to fine-tune; give one")
    sources = {}
    for seed in seeds:
        if seed == 0:
            trial, _ = selected_trial(spec, method, f"--init-from-tuned {method}")
            sources[seed] = ["--init-from", str(Path(spec.out) / "runs" / trial.run_id)]
            continue
        assert confirm_out is not None  # trials train at seed 0
        folder = Path(confirm_out) / "runs" / tuned_run_id(method, spec.name, seed)
        if not folder.is_dir():
            raise FairbenchError(
                f"--init-from-tuned {method}: seed {seed} fine-tunes {folder}, which does not exist yet; "
                f"run the tuned rows of {method} first (`fairbench tune --confirm --methods {method}` "
                f"with its own options and these --seeds)"
            )
        sources[seed] = ["--init-from", str(folder)]
    return sources


def prepare_seed0(spec: StudySpec, trial: TrialSpec, cfg: Any, echo: Callable[[str], None]) -> None:
    """Start the tuned row's seed-0 folder from the selected trial's checkpoint, so that seed 0 is
    the selected run itself, evaluated on the test set (the sweep resumes it: every epoch is done,
    so it only evaluates). The trial's folder is read, never written. Without the checkpoint (a
    fresh clone: checkpoints are not committed) seed 0 trains again, which on the CPU gives the same
    weights bit for bit."""
    import shutil

    from fairbench.runs.folder import CHECKPOINT_FILE, CONFIG_FILE, LOG_FILE, atomic_write_json

    source = Path(spec.out) / "runs" / trial.run_id
    target = Path(cfg.out) / "runs" / str(cfg.run_id)
    if target.exists():
        return
    if not (source / CHECKPOINT_FILE).is_file() or (source / CHECKPOINT_FILE).is_symlink():
        echo(f"note: {source} has no checkpoint; {cfg.run_id} trains the selected configuration again")
        return
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    for name in (CHECKPOINT_FILE, LOG_FILE):
        shutil.copyfile(source / name, partial / name, follow_symlinks=False)
    atomic_write_json(partial / CONFIG_FILE, cfg.portable_dict())
    partial.rename(target)  # the folder appears whole, or not at all
