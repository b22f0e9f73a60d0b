"""The job spec: what a team asks Crucible to do, validated before anything runs.

This module is the contract between the control plane and the cluster: the API validates a
spec with these models and stores it; the job driver reads the same models back. The JSON
Schema served at ``GET /v1/spec/schema`` is generated from here, so every field carries a
description.

Checks that need more than one field (search paths, metric/mode agreement) or the dataset's
columns live in :func:`check_spec` and :func:`check_against_columns`; they return every
problem at once, each with the dotted path of the field that is wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a spec must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


class SplitSpec(_Strict):
    validation: float = Field(0.15, gt=0, lt=1, description="Fraction of rows for validation.")
    test: float = Field(0.15, gt=0, lt=1, description="Fraction of rows held out for the test.")
    seed: int = Field(0, ge=0, description="Seed of the shuffle; same seed, same split.")
    stratify: bool = Field(
        True, description="Keep class proportions equal across splits (classification only)."
    )

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSpec:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% of rows for training")
        return self


class DatasetRef(_Strict):
    id: str = Field(description="Id of a registered dataset (see GET /v1/datasets).")
    target: str = Field(min_length=1, description="Column to predict.")
    features: list[str] | None = Field(
        None,
        description="Input columns; default: every column but the target and the sensitive "
        "features.",
    )
    split: SplitSpec = Field(default_factory=lambda: SplitSpec())


class PreprocessingSpec(_Strict):
    impute: Literal["median", "mean"] = Field(
        "median", description="How missing numeric values are filled (fitted on training rows)."
    )
    scale: Literal["standard", "minmax", "none"] = Field(
        "standard", description="Scaling of numeric columns (fitted on training rows)."
    )
    categorical: Literal["one_hot"] = Field(
        "one_hot",
        description="Encoding of text columns; categories unseen in training encode as all zeros.",
    )


class MLPSpec(_Strict):
    architecture: Literal["mlp"] = Field("mlp", description="Model family.")
    hidden_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [64, 32],
        min_length=1,
        max_length=8,
        description="Width of each hidden layer.",
    )
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu"] = Field(
        "relu", description="Activation after each hidden layer."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")


class EarlyStoppingSpec(_Strict):
    metric: Literal["val_loss", "val_accuracy", "val_f1_macro"] = Field(
        "val_loss", description="Validation metric watched for improvement."
    )
    patience: int = Field(3, ge=1, le=1000, description="Epochs without improvement to wait.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class TrainingSpec(_Strict):
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("adam")
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Step size of the optimizer.")
    batch_size: int = Field(128, ge=1, le=65536)
    epochs: int = Field(10, ge=1, le=1000)
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 penalty.")
    seed: int = Field(0, ge=0, description="Seed of weight init and batch order.")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop a trial when its validation metric stops improving."
    )


class Domain(_Strict):
    """One searchable dimension: exactly one of the five keys."""

    choice: list[Any] | None = Field(None, description="Pick one of these values.")
    grid: list[Any] | None = Field(
        None, description="Try every one of these values (algorithm 'grid' or 'random')."
    )
    uniform: tuple[float, float] | None = Field(None, description="[low, high) uniformly.")
    loguniform: tuple[float, float] | None = Field(
        None, description="[low, high) uniformly in log space; low > 0."
    )
    randint: tuple[int, int] | None = Field(None, description="An integer in [low, high).")

    @model_validator(mode="after")
    def _exactly_one(self) -> Domain:
        kinds = ("choice", "grid", "uniform", "loguniform", "randint")
        given = [k for k in kinds if getattr(self, k) is not None]
        if self.choice == [] or self.grid == []:
            raise ValueError(f"{given[0]} must list at least one value")
        if len(given) != 1:
            raise ValueError("give exactly one of " + ", ".join(kinds))
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None:
            low, high = bounds
            if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
                raise ValueError(f"{given[0]} needs finite low < high, got [{low}, {high}]")
            if self.loguniform and low <= 0:
                raise ValueError("loguniform needs low > 0")
        return self

    def candidates(self) -> list[Any]:
        """Values that bound the domain, used to check them against the field they set."""
        values = self.choice if self.choice is not None else self.grid
        if values is not None:
            return list(values)
        if self.randint is not None:
            return [self.randint[0], self.randint[1] - 1]
        bounds = self.uniform or self.loguniform
        assert bounds is not None
        return [bounds[0], bounds[1]]


SearchMetric = Literal["val_accuracy", "val_f1_macro", "val_loss"]


class SearchSpec(_Strict):
    space: dict[str, Domain] = Field(
        default_factory=dict,
        description="Searchable fields by dotted path, e.g. 'training.learning_rate'.",
    )
    algorithm: Literal["random", "grid", "optuna"] = Field(
        "random",
        description="random: sample the space; grid: every combination of the 'grid' and "
        "'choice' values; optuna: Bayesian optimisation (TPE) that learns from finished trials.",
    )
    scheduler: Literal["none", "asha", "hyperband", "median", "pbt"] = Field(
        "none",
        description="Early stopping across trials: asha (asynchronous successive halving), "
        "hyperband, median (stop trials below the running median), pbt (population-based "
        "training: copies the best trials' state and perturbs 'training.*' fields).",
    )
    num_trials: int = Field(
        4,
        ge=1,
        le=1000,
        description="Trials to run. With algorithm 'grid' the grid's size decides; leave it out.",
    )
    max_concurrent: int = Field(
        2,
        ge=1,
        le=256,
        description="Trials running at once. With hyperband and pbt, which pause trials until "
        "their bracket or population catches up, the cluster's resources set the limit.",
    )
    points_to_evaluate: list[dict[str, Any]] = Field(
        default_factory=list,
        description="Configurations to try first, e.g. a known good one: "
        "[{'training.learning_rate': 0.001}]. Keys are paths of the search space.",
    )
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="Wall-clock budget: the search ends cleanly with the best "
        "result so far when it runs out.",
    )
    max_epochs_per_trial: int | None = Field(
        None,
        ge=1,
        le=1000,
        description="Cap on any trial's epochs, whatever it samples.",
    )
    max_failures: int = Field(
        2,
        ge=0,
        le=100,
        description="Times a trial whose worker dies is restarted from its last checkpoint.",
    )
    pbt_interval: int = Field(
        2,
        ge=1,
        le=1000,
        description="Epochs between PBT's exploit/explore steps.",
    )
    metric: SearchMetric = Field("val_accuracy", description="Validation metric to optimise.")
    mode: Literal["max", "min"] | None = Field(
        None, description="max or min; default follows the metric (min for losses)."
    )
    seed: int = Field(0, ge=0, description="Seed of the sampler.")

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        if self.mode is not None:
            return self.mode
        return "min" if self.metric.endswith("loss") else "max"


class ResourcesSpec(_Strict):
    workers_per_trial: int = Field(
        1,
        ge=1,
        le=256,
        description="Processes training one trial. 1: a plain Tune trial; more: data-parallel "
        "training (PyTorch DDP through Ray Train; gloo on CPU, NCCL on GPU), the data sharded "
        "across workers and the batch size split between them.",
    )
    cpus_per_worker: float = Field(1.0, gt=0, le=256, description="CPUs each worker reserves.")
    gpus_per_worker: float = Field(
        0.0, ge=0, le=16, description="GPUs each worker reserves; > 0 trains on CUDA."
    )


DisparityName = Literal[
    "demographic_parity_ratio",
    "demographic_parity_difference",
    "equalized_odds_ratio",
    "equalized_odds_difference",
    "equal_opportunity_ratio",
    "equal_opportunity_difference",
    "accuracy_difference",
]
# The name the spec has always used for the keys of audit.thresholds.
ThresholdName = DisparityName

# The four-fifths rule: a configurable convention from US employment guidance, used here as a
# default screen, not as a legal test of discrimination.
FOUR_FIFTHS = 0.8


def _default_thresholds() -> dict[ThresholdName, float]:
    return {"demographic_parity_ratio": FOUR_FIFTHS}


class BootstrapSpec(_Strict):
    resamples: int = Field(
        200,
        ge=0,
        le=10_000,
        description="Bootstrap resamples behind every interval; 0 computes point estimates only.",
    )
    confidence: float = Field(
        0.95, gt=0, lt=1, description="Coverage of the percentile intervals, e.g. 0.95."
    )
    seed: int = Field(0, ge=0, description="Seed of the resampling; same seed, same intervals.")


class GateRule(_Strict):
    metric: DisparityName = Field(
        description="Disparity to bound. Ratios (smallest over largest) must be at least the "
        "threshold, differences (largest minus smallest) at most."
    )
    threshold: float = Field(ge=0, le=1, description="The limit the disparity must meet.")
    method: Literal["between_groups", "to_overall"] = Field(
        "between_groups",
        description="between_groups: the extreme groups compared with each other; to_overall: "
        "each group compared with the metric on all rows.",
    )
    # Not "on": YAML 1.1 reads a bare `on` key as the boolean true.
    compare: Literal["point", "interval"] = Field(
        "interval",
        description="point: the estimate must pass; interval: the pessimistic end of the "
        "bootstrap interval must pass (the lower bound of a ratio, the upper bound of a "
        "difference), so a disparity that may plausibly be worse than allowed fails.",
    )


class AuditOptions(_Strict):
    """What an audit compares and how it judges; shared by jobs and POST /v1/audits."""

    sensitive_features: list[str] = Field(
        default_factory=list, description="Columns whose groups are compared in the audit."
    )
    intersections: list[list[str]] | None = Field(
        None,
        description="Groups of sensitive features audited together (e.g. [['sex', 'race']] "
        "makes groups like 'Female \u00d7 Black'). Default: all sensitive features together "
        "when there are two or more; [] for none.",
    )
    positive_label: str | None = Field(
        None,
        description="Class counted as the favourable outcome; default: the last class in "
        "sorted order (e.g. '>50K'), or 1 for 0/1 labels.",
    )
    thresholds: dict[ThresholdName, Annotated[float, Field(ge=0)]] = Field(
        default_factory=_default_thresholds,
        description="Limits on point estimates between groups, checked for every sensitive "
        "feature and intersection: a ratio at least its value, a difference at most. Default: "
        "the four-fifths rule on demographic parity ratio (>= 0.8), a configurable convention, "
        "not a legal test. {} checks nothing here.",
    )
    bootstrap: BootstrapSpec = Field(
        default_factory=lambda: BootstrapSpec(),
        description="Bootstrap confidence intervals on every group metric and disparity.",
    )
    gate: list[GateRule] = Field(
        default_factory=list,
        description="Further checks, on a point estimate or an interval bound, e.g. "
        "{metric: demographic_parity_ratio, threshold: 0.8, compare: interval} requires the lower "
        "bound of the ratio to be at least 0.8. Checked with the thresholds; all must pass.",
    )
    min_group_count: int = Field(
        30,
        ge=0,
        description="Groups with fewer rows are flagged 'small': their rates are too noisy to "
        "judge.",
    )
    small_groups: Literal["skip", "fail"] = Field(
        "skip",
        description="What checks do with small groups: skip leaves them out of the disparities "
        "the checks judge (and says so); fail makes every check of a feature with a small "
        "group fail.",
    )
    intended_use: str | None = Field(
        None,
        max_length=2000,
        description="What the model is for and for whom; shown in the report's model card.",
    )

    @model_validator(mode="after")
    def _coherent(self) -> AuditOptions:
        known = set(self.sensitive_features)
        for combo in self.intersections or []:
            if len(combo) < 2 or len(set(combo)) != len(combo):
                raise ValueError(
                    f"intersections: {combo} must name at least two different features"
                )
            unknown = [name for name in combo if name not in known]
            if unknown:
                raise ValueError(f"intersections: {unknown} are not in sensitive_features")
        if self.bootstrap.resamples == 0 and any(r.compare == "interval" for r in self.gate):
            raise ValueError("gate: a rule on the interval needs bootstrap.resamples > 0")
        return self

    def sections(self) -> list[list[str]]:
        """The feature sets audited: each sensitive feature, then each intersection."""
        if self.intersections is not None:
            combos = self.intersections
        elif len(self.sensitive_features) >= 2:
            combos = [list(self.sensitive_features)]
        else:
            combos = []
        return [[name] for name in self.sensitive_features] + [list(c) for c in combos]


class AuditSpec(AuditOptions):
    use_as_features: bool = Field(
        False, description="Also feed the sensitive columns to the model (off by default)."
    )


class JobSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="A short name for the job.")
    dataset: DatasetRef
    preprocessing: PreprocessingSpec = Field(default_factory=lambda: PreprocessingSpec())
    model: MLPSpec = Field(default_factory=lambda: MLPSpec())
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec())
    search: SearchSpec = Field(default_factory=lambda: SearchSpec())
    resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec())
    audit: AuditSpec = Field(default_factory=lambda: AuditSpec())


# Sections whose fields a search may set. The dataset, the search itself and the audit are
# fixed for a job: searching them would compare trials on different data or goals.
SEARCHABLE_SECTIONS = ("model", "training", "preprocessing")


@dataclass(frozen=True)
class FieldError:
    loc: tuple[str | int, ...]
    msg: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg}


def _field_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    field = model.model_fields[name]
    annotation = field.annotation
    for candidate in getattr(annotation, "__args__", ()) or (annotation,):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def resolve_path(path: str) -> str | None:
    """Return why ``path`` names no searchable field, or None when it does."""
    parts = path.split(".")
    if parts[0] not in SEARCHABLE_SECTIONS:
        return f"'{path}' is not searchable: paths start with one of {list(SEARCHABLE_SECTIONS)}"
    model: type[BaseModel] | None = JobSpec
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            return f"'{path}' names no field of the spec"
        if i == len(parts) - 1:
            inner = _field_model(model, part)
            if inner is not None:
                return f"'{path}' is a section; name one of its fields"
            return None
        model = _field_model(model, part)
    return None


def apply_overrides(spec_dict: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of a spec dict with dotted-path values set (missing sections created)."""
    import copy

    out = copy.deepcopy(spec_dict)
    for path, value in overrides.items():
        node = out
        *parents, leaf = path.split(".")
        for part in parents:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        node[leaf] = value
    return out


def check_spec(spec: JobSpec) -> list[FieldError]:
    """Problems that span fields; an empty list means the spec is sound on its own."""
    errors: list[FieldError] = []
    s = spec.search
    if s.mode is not None:
        natural = "min" if s.metric.endswith("loss") else "max"
        if s.mode != natural:
            errors.append(
                FieldError(
                    ("search", "mode"),
                    f"metric '{s.metric}' is optimised with mode '{natural}', not '{s.mode}'",
                )
            )
    base = spec.model_dump(mode="json")
    errors += _check_algorithm(s)
    for i, point in enumerate(s.points_to_evaluate):
        for path, value in point.items():
            loc_p: tuple[str | int, ...] = ("search", "points_to_evaluate", i, path)
            if path not in s.space:
                errors.append(FieldError(loc_p, f"'{path}' is not in search.space"))
            elif (why := _invalid_value(base, path, value)) is not None:
                errors.append(FieldError(loc_p, why))
    for path, domain in s.space.items():
        loc: tuple[str | int, ...] = ("search", "space", path)
        why = resolve_path(path)
        if why is not None:
            errors.append(FieldError(loc, why))
            continue
        for value in domain.candidates():
            if (why := _invalid_value(base, path, value)) is not None:
                errors.append(FieldError(loc, why))
                break
    sens = spec.audit.sensitive_features
    if spec.dataset.target in sens:
        errors.append(
            FieldError(("audit", "sensitive_features"), "the target cannot be a sensitive feature")
        )
    if len(set(sens)) != len(sens):
        errors.append(FieldError(("audit", "sensitive_features"), "names a column twice"))
    return errors


def _invalid_value(base: dict[str, Any], path: str, value: Any) -> str | None:
    """Why setting ``path`` to ``value`` makes the spec invalid, or None when it does not."""
    try:
        JobSpec.model_validate(apply_overrides(base, {path: value}))
    except ValidationError as exc:
        detail = "; ".join(e["msg"] for e in exc.errors())
        return f"value {value!r} is not valid for {path}: {detail}"
    return None


def _check_algorithm(s: SearchSpec) -> list[FieldError]:
    errors: list[FieldError] = []
    grids = [p for p, d in s.space.items() if d.grid is not None]
    if s.algorithm == "grid":
        sampled = [p for p, d in s.space.items() if d.grid is None and d.choice is None]
        for path in sampled:
            errors.append(
                FieldError(
                    ("search", "space", path), "algorithm 'grid' needs 'grid' or 'choice' values"
                )
            )
        if not s.space:
            errors.append(FieldError(("search", "space"), "algorithm 'grid' needs a space"))
        size = math.prod(len(d.candidates()) for d in s.space.values()) if s.space else 0
        if "num_trials" in s.model_fields_set and s.num_trials != size:
            errors.append(
                FieldError(
                    ("search", "num_trials"), f"the grid has {size} points; leave num_trials out"
                )
            )
    if s.algorithm == "optuna":
        for path in grids:
            errors.append(
                FieldError(("search", "space", path), "optuna samples: use 'choice', not 'grid'")
            )
    if s.scheduler == "pbt":
        if s.algorithm != "random":
            errors.append(
                FieldError(
                    ("search", "algorithm"), "pbt explores by itself: use algorithm 'random'"
                )
            )
        for path in s.space:
            if not path.startswith("training."):
                # PBT copies a trial's weights into another: the architecture must not change.
                errors.append(
                    FieldError(
                        ("search", "space", path), "with pbt only training.* fields can be searched"
                    )
                )
        if not s.space:
            errors.append(FieldError(("search", "space"), "pbt needs fields to perturb"))
    return errors


def check_against_columns(spec: JobSpec, columns: list[str]) -> list[FieldError]:
    """Problems found by comparing the spec with the dataset's columns."""
    errors: list[FieldError] = []
    known = set(columns)
    if spec.dataset.target not in known:
        errors.append(
            FieldError(
                ("dataset", "target"),
                f"column '{spec.dataset.target}' is not in the dataset; columns: {columns}",
            )
        )
    for i, name in enumerate(spec.audit.sensitive_features):
        if name not in known:
            errors.append(
                FieldError(
                    ("audit", "sensitive_features", i), f"column '{name}' is not in the dataset"
                )
            )
    for i, name in enumerate(spec.dataset.features or []):
        if name not in known:
            errors.append(
                FieldError(("dataset", "features", i), f"column '{name}' is not in the dataset")
            )
        elif name == spec.dataset.target:
            errors.append(
                FieldError(("dataset", "features", i), "the target cannot be an input feature")
            )
    return errors


def feature_columns(spec: JobSpec, columns: list[str]) -> list[str]:
    """The model's input columns, in dataset order."""
    if spec.dataset.features is not None:
        return list(spec.dataset.features)
    excluded = {spec.dataset.target}
    if not spec.audit.use_as_features:
        excluded |= set(spec.audit.sensitive_features)
    return [c for c in columns if c not in excluded]


def effective_spec(spec: JobSpec, overrides: dict[str, Any]) -> JobSpec:
    """The spec one trial trains with: the job's spec with the trial's sampled values."""
    if not overrides:
        return spec
    return JobSpec.model_validate(apply_overrides(spec.model_dump(mode="json"), overrides))
