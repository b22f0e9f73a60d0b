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

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from jobs.text import Prose

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a spec must not be silently ignored.
    model_config = ConfigDict(extra="forbid")


Task = Literal["classification", "regression", "anomaly_detection"]
SearchMetric = Literal[
    "val_accuracy", "val_f1_macro", "val_loss", "val_mae", "val_rmse", "val_r2", "val_auc"
]
# Which validation metrics each task reports, its default first.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("val_accuracy", "val_f1_macro", "val_loss"),
    "regression": ("val_rmse", "val_mae", "val_r2", "val_loss"),
    "anomaly_detection": ("val_auc", "val_loss"),
}
# Validation metrics a search minimises (distinct from LOWER_IS_BETTER, for test figures).
_MINIMISED = frozenset({"val_loss", "val_mae", "val_rmse"})


def natural_mode(metric: str) -> Literal["max", "min"]:
    return "min" if metric in _MINIMISED else "max"


class SplitSpec(_Strict):
    validation: float = Field(0.15, gt=0, lt=1, description="Fraction of rows for validation.")
    test: float = Field(0.15, gt=0, lt=1, description="Fraction of rows held out for the test.")
    seed: int = Field(0, ge=0, description="Seed of the shuffle; same seed, same split.")
    method: Literal["random", "stratified", "group", "time"] | None = Field(
        None,
        description="random: shuffled rows; stratified: class proportions kept in every split "
        "(classification); group: rows sharing a value of 'column' never land in two splits "
        "(e.g. one patient's records); time: ordered by 'column', the oldest rows train, the "
        "newest test. Default: stratified for classification, random otherwise.",
    )
    column: str | None = Field(
        None, description="The group or time column for method 'group' or 'time'."
    )
    stratify: bool | None = Field(
        None,
        description="Deprecated spelling of method: true is 'stratified', false 'random'.",
    )

    @model_validator(mode="after")
    def _leaves_training_rows(self) -> SplitSpec:
        if self.validation + self.test >= 0.9:
            raise ValueError("validation + test must leave at least 10% of rows for training")
        if self.method in ("group", "time") and not self.column:
            raise ValueError(f"method '{self.method}' needs 'column'")
        if self.column and self.method not in ("group", "time"):
            raise ValueError("'column' is only used by method 'group' or 'time'")
        if self.stratify is not None and self.method is not None:
            raise ValueError("give method or the older stratify, not both")
        return self

    def resolved_method(self, task: str) -> str:
        if self.method is not None:
            return self.method
        if self.stratify is False or task != "classification":
            return "random"
        return "stratified"


class SequenceWindows(_Strict):
    time_column: str = Field(min_length=1, description="Orders the steps of each series.")
    id_column: str | None = Field(
        None,
        description="Which series a row belongs to (e.g. a sensor); windows never span two. "
        "Without it the whole table is one series. With it, the split is by series by default.",
    )
    window: int = Field(ge=2, le=4096, description="Steps in one example.")
    stride: int = Field(1, ge=1, le=4096, description="Steps between the starts of examples.")


class DatasetRef(_Strict):
    id: str = Field(description="Id of a registered dataset (see GET /v1/datasets).")
    target: str = Field(min_length=1, description="Column to predict.")
    features: list[str] | None = Field(
        None,
        description="Input columns; default: every column but the target, the sensitive "
        "features and the split column. Images and sequences are one array column (a list of "
        "numbers per row, or of lists: [H][W] or [C][H][W] for an image, [T] or [T][F] for a "
        "sequence).",
    )
    split: SplitSpec = Field(default_factory=lambda: SplitSpec())
    sequence: SequenceWindows | None = Field(
        None,
        description="Read a long table (one row per time step) as sequences: the numeric "
        "feature columns of 'window' consecutive steps of one series become one example, "
        "labelled with the target of its last step.",
    )

    @model_validator(mode="after")
    def _sequence_columns(self) -> DatasetRef:
        w = self.sequence
        if w is not None:
            named = {w.time_column, w.id_column} - {None}
            if self.target in named:
                raise ValueError("the target cannot be the sequence's id or time column")
            if self.features and named & set(self.features):
                raise ValueError("the sequence's id and time columns are not input features")
        return self


Impute = Literal["drop", "mean", "median", "most_frequent", "constant"]
Scale = Literal["standard", "minmax", "none"]


class ColumnPreprocessing(_Strict):
    impute: Impute | None = Field(None, description="Overrides preprocessing.impute here.")
    fill_value: float | str | None = Field(
        None, description="The value 'constant' fills in for this column."
    )
    scale: Scale | None = Field(None, description="Overrides preprocessing.scale here.")
    categorical: Literal["one_hot", "ordinal"] | None = Field(
        None, description="Overrides preprocessing.categorical here."
    )


class AugmentationSpec(_Strict):
    """Random changes to training batches only; validation, test and serving see raw data."""

    flip: bool = Field(False, description="Images: mirror left-right with probability 0.5.")
    rotation_degrees: float = Field(
        0.0, ge=0, le=180, description="Images: rotate by a uniform angle in ±this many degrees."
    )
    shift: int = Field(
        0, ge=0, le=64, description="Images: translate by up to this many pixels each way."
    )
    noise_std: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Any input: add Gaussian noise with this standard deviation (inputs are "
        "already scaled, so it is in units of the scaled feature).",
    )
    mixup_alpha: float = Field(
        0.0,
        ge=0,
        le=10,
        description="Classification: mixup, blending pairs of examples and their labels with a "
        "Beta(alpha, alpha) weight; 0 turns it off.",
    )

    @property
    def active(self) -> bool:
        return bool(
            self.flip or self.rotation_degrees or self.shift or self.noise_std or self.mixup_alpha
        )


class PreprocessingSpec(_Strict):
    impute: Impute = Field(
        "median",
        description="Missing values: drop the rows (training, validation and test; serving "
        "still fills them), or fill with the training split's mean, median, most frequent value "
        "or 'fill_value'. In text columns mean and median leave a missing value as its own "
        "'none of these' (like an unseen category); most_frequent and constant fill it.",
    )
    fill_value: float | str | None = Field(
        None, description="The value 'constant' fills in (default 0 for numbers, 'missing' text)."
    )
    scale: Scale = Field(
        "standard",
        description="Numbers: standardise (mean 0, std 1), min-max normalise to [0, 1], or "
        "leave. Array columns (images, sequences) are scaled as a whole.",
    )
    categorical: Literal["one_hot", "ordinal"] = Field(
        "one_hot",
        description="Text columns: one_hot (categories unseen in training encode as all zeros) "
        "or ordinal (one number per category in sorted order; unseen ones get -1).",
    )
    columns: dict[str, ColumnPreprocessing] = Field(
        default_factory=dict, description="Per-column overrides, keyed by column name."
    )
    augmentation: AugmentationSpec | None = Field(
        None, description="Random augmentation of training batches."
    )


Activation = Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu"]
MODEL_ID_PATTERN = r"^mdl_[A-Za-z0-9_-]{1,60}$"


class _ModelBase(_Strict):
    init_from: str | None = Field(
        None,
        pattern=MODEL_ID_PATTERN,
        description="Transfer learning: start from the weights of this registered model (see "
        "GET /v1/models), which must have the same architecture and input shape. Layers whose "
        "shape differs (a head for other classes) start fresh. The new model's lineage records "
        "the parent.",
    )
    freeze: list[Literal["body", "head"]] = Field(
        default_factory=list,
        description="Layer groups to keep fixed while training: body (everything before the "
        "output layer; the encoder of an autoencoder) or head. Needs init_from.",
    )

    @model_validator(mode="after")
    def _freeze_needs_parent(self) -> _ModelBase:
        if self.freeze and self.init_from is None:
            raise ValueError("freeze keeps pretrained layers fixed: it needs init_from")
        if len(set(self.freeze)) == 2:
            raise ValueError("freezing body and head leaves nothing to train")
        return self


class MLPSpec(_ModelBase):
    """Fully connected layers; the default for tables."""

    architecture: Literal["mlp"] = Field("mlp", description="Model family.")
    hidden_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [64, 32],
        min_length=1,
        max_length=8,
        description="Width of each hidden layer.",
    )
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")
    norm: Literal["none", "batch", "layer"] = Field(
        "none", description="Normalisation after each hidden layer's linear map."
    )


class CNNSpec(_ModelBase):
    """Convolution blocks over an image column, then global average pooling and a linear head."""

    architecture: Literal["cnn"] = Field(description="Model family.")
    channels: list[Annotated[int, Field(ge=1, le=1024)]] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=8,
        description="Output channels of each conv block (conv, norm, activation, pool).",
    )
    kernel_size: int = Field(3, ge=1, le=11, description="Side of the square kernels (odd).")
    pooling: Literal["max", "avg", "none"] = Field(
        "max", description="2x2 pooling after each block, while the image is at least 2x2."
    )
    batch_norm: bool = Field(True, description="Batch normalisation in each block.")
    activation: Activation = Field("relu", description="Activation in each block.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout before the linear head.")

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("kernel_size must be odd, so the image keeps its size")
        return value


class RNNSpec(_ModelBase):
    """A recurrent network over a sequence column; the last step's state feeds the head."""

    architecture: Literal["lstm", "gru"] = Field(description="Model family: lstm or gru.")
    hidden_size: int = Field(64, ge=1, le=4096, description="Width of the recurrent state.")
    num_layers: int = Field(1, ge=1, le=8, description="Stacked recurrent layers.")
    bidirectional: bool = Field(False, description="Also read each sequence backwards.")
    dropout: float = Field(
        0.0, ge=0, lt=1, description="Dropout between stacked layers and before the head."
    )


class TransformerSpec(_ModelBase):
    """A transformer encoder over the steps of a sequence, or over the features of a table (each
    feature becomes a token), mean-pooled into a linear head."""

    architecture: Literal["transformer"] = Field(description="Model family.")
    d_model: int = Field(32, ge=2, le=4096, description="Width of each token.")
    num_heads: int = Field(4, ge=1, le=64, description="Attention heads; must divide d_model.")
    num_layers: int = Field(2, ge=1, le=24, description="Encoder layers.")
    dim_feedforward: int = Field(64, ge=1, le=16384, description="Width of each feed-forward.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the encoder.")

    @model_validator(mode="after")
    def _heads_divide(self) -> TransformerSpec:
        if self.d_model % self.num_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must divide d_model ({self.d_model})")
        return self


class AutoencoderSpec(_ModelBase):
    """Anomaly detection: learns to reconstruct normal rows; a row it reconstructs badly (error
    above a threshold set on validation data) is an anomaly."""

    architecture: Literal["autoencoder"] = Field(description="Model family.")
    encoder_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [32, 16],
        max_length=8,
        description="Widths of the encoder's layers; the decoder mirrors them.",
    )
    bottleneck: int = Field(4, ge=1, le=1024, description="Width of the code in the middle.")
    activation: Activation = Field("relu", description="Activation after each hidden layer.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout after each hidden layer.")
    threshold_quantile: float = Field(
        0.99,
        gt=0,
        lt=1,
        description="The anomaly threshold is this quantile of the reconstruction error of "
        "normal validation rows (0.99: about 1% of normal rows are flagged).",
    )


_FAMILY = {"lstm": "rnn", "gru": "rnn"}


def _family(value: Any) -> str | None:
    # Specs written before there were several architectures leave it out: an MLP.
    arch = value.get("architecture", "mlp") if isinstance(value, dict) else value.architecture
    return _FAMILY.get(arch, arch) if isinstance(arch, str) else None


ModelSpec = Annotated[
    Annotated[MLPSpec, Tag("mlp")]
    | Annotated[CNNSpec, Tag("cnn")]
    | Annotated[RNNSpec, Tag("rnn")]
    | Annotated[TransformerSpec, Tag("transformer")]
    | Annotated[AutoencoderSpec, Tag("autoencoder")],
    Discriminator(
        _family,
        custom_error_type="architecture",
        custom_error_message="architecture must be one of mlp, cnn, lstm, gru, transformer, "
        "autoencoder",
    ),
]


class EarlyStoppingSpec(_Strict):
    metric: SearchMetric = Field("val_loss", description="Validation metric watched.")
    patience: int = Field(3, ge=1, le=1000, description="Epochs without improvement to wait.")
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class LRScheduleSpec(_Strict):
    kind: Literal["none", "step", "cosine", "plateau"] = Field(
        "none",
        description="step: multiply by gamma every step_size epochs; cosine: anneal to min_lr "
        "over the epochs; plateau: multiply by gamma when the validation loss stalls for "
        "'patience' epochs.",
    )
    step_size: int = Field(10, ge=1, le=1000, description="Epochs between steps ('step').")
    gamma: float = Field(0.1, gt=0, lt=1, description="Factor of each decrease.")
    patience: int = Field(2, ge=0, le=1000, description="Stalled epochs before a decrease.")
    min_lr: float = Field(0.0, ge=0, description="Floor of the learning rate.")
    warmup_epochs: int = Field(
        0, ge=0, le=1000, description="Linear warm-up from lr/10 over these first epochs."
    )


class TrainingSpec(_Strict):
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = Field(
        "adam", description="sgd (with momentum), adam, adamw (decoupled weight decay), rmsprop."
    )
    learning_rate: float = Field(1e-3, gt=0, le=10, description="Step size of the optimizer.")
    momentum: float = Field(0.9, ge=0, lt=1, description="Momentum of sgd and rmsprop.")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd).")
    batch_size: int = Field(128, ge=1, le=65536)
    epochs: int = Field(10, ge=1, le=1000)
    weight_decay: float = Field(0.0, ge=0, le=1, description="L2 penalty.")
    l1: float = Field(0.0, ge=0, le=1, description="L1 penalty on the weights, added to the loss.")
    grad_clip_norm: float | None = Field(
        None, gt=0, description="Clip the gradients' global norm to this value."
    )
    lr_schedule: LRScheduleSpec = Field(
        default_factory=lambda: LRScheduleSpec(), description="Learning-rate schedule."
    )
    loss: Literal["auto", "cross_entropy", "mse", "mae", "huber"] = Field(
        "auto",
        description="auto: cross-entropy for classification, mse for regression and "
        "autoencoders. Regression may choose mae or huber.",
    )
    class_weights: Literal["none", "balanced"] | dict[str, float] = Field(
        "none",
        description="Weights of the classes in the loss: balanced (inverse class frequency in "
        "training rows) or a weight per class label; fights imbalance.",
    )
    seed: int = Field(0, ge=0, description="Seed of weight init and batch order.")
    early_stopping: EarlyStoppingSpec | None = Field(
        None, description="Stop a trial when its validation metric stops improving."
    )
    mixed_precision: Literal["none", "bf16", "fp16"] = Field(
        "none",
        description="Autocast on GPU (fp16 with a gradient scaler); on CPU it is ignored with "
        "a logged notice.",
    )
    compile: bool = Field(
        False, description="torch.compile the model on GPU; ignored with a notice on CPU."
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
    metric: SearchMetric | None = Field(
        None,
        description="Validation metric to optimise; default: val_accuracy for classification, "
        "val_rmse for regression, val_auc (ROC-AUC) for anomaly detection.",
    )
    mode: Literal["max", "min"] | None = Field(
        None, description="max or min; default follows the metric (min for losses and errors)."
    )
    seed: int = Field(0, ge=0, description="Seed of the sampler.")

    @property
    def trial_count(self) -> int:
        """Trials the search runs: the grid's size with algorithm grid, else num_trials."""
        if self.algorithm == "grid":
            return math.prod(len(d.candidates()) for d in self.space.values()) if self.space else 0
        return self.num_trials

    @property
    def resolved_metric(self) -> str:
        # JobSpec fills the metric in from the task; a bare SearchSpec means classification.
        return self.metric or "val_accuracy"

    @property
    def resolved_mode(self) -> Literal["max", "min"]:
        if self.mode is not None:
            return self.mode
        return natural_mode(self.resolved_metric)


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
    intended_use: Prose | None = Field(
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


class MitigationSpec(_Strict):
    """A second, mitigated candidate next to the best model (binary classification)."""

    method: Literal["threshold_optimizer"] = Field(
        "threshold_optimizer",
        description="fairlearn's ThresholdOptimizer: a threshold on the model's score per group "
        "of one sensitive feature, fitted on the validation split, judged on the test split.",
    )
    feature: str | None = Field(
        None, description="The sensitive feature whose groups get thresholds; default the first."
    )
    constraint: Literal[
        "demographic_parity",
        "equalized_odds",
        "true_positive_rate_parity",
        "false_positive_rate_parity",
    ] = Field("demographic_parity", description="What the thresholds equalise across groups.")
    objective: Literal["accuracy_score", "balanced_accuracy_score"] = Field(
        "accuracy_score", description="What the thresholds maximise under the constraint."
    )


class AuditSpec(AuditOptions):
    use_as_features: bool = Field(
        False, description="Also feed the sensitive columns to the model (off by default)."
    )
    mitigation: MitigationSpec | None = Field(
        None,
        description="Also build a mitigated candidate, evaluated and audited beside the best "
        "model, so the accuracy cost of fairness shows and either can be promoted. A mitigated "
        "model needs the sensitive feature in every prediction request.",
    )

    @model_validator(mode="after")
    def _mitigation_feature(self) -> AuditSpec:
        m = self.mitigation
        if m is not None:
            if not self.sensitive_features:
                raise ValueError("mitigation needs sensitive_features")
            if m.feature is not None and m.feature not in self.sensitive_features:
                raise ValueError(f"mitigation.feature '{m.feature}' is not a sensitive feature")
        return self

    @property
    def mitigation_feature(self) -> str | None:
        m = self.mitigation
        return None if m is None else (m.feature or self.sensitive_features[0])


# Figures of the test-split evaluation a promotion gate may bound, per task (jobs/evaluate.py).
_CLASSIFICATION_FIGURES = (
    "accuracy",
    "precision",
    "recall",
    "f1",
    "precision_macro",
    "recall_macro",
    "f1_macro",
)
PROMOTION_METRICS: dict[str, tuple[str, ...]] = {
    "classification": _CLASSIFICATION_FIGURES,
    "anomaly_detection": (*_CLASSIFICATION_FIGURES, "roc_auc"),
    "regression": ("mae", "rmse", "r2"),
}
# Errors: lower is better. Every other figure is a score: higher is better.
LOWER_IS_BETTER = frozenset({"mae", "rmse"})
PromotionMetric = Literal[
    "accuracy",
    "precision",
    "recall",
    "f1",
    "precision_macro",
    "recall_macro",
    "f1_macro",
    "roc_auc",
    "mae",
    "rmse",
    "r2",
]
ENDPOINT_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"


class MetricBound(_Strict):
    min: float | None = Field(None, description="The figure must be at least this.")
    max: float | None = Field(None, description="The figure must be at most this.")

    @model_validator(mode="after")
    def _bounded(self) -> MetricBound:
        if self.min is None and self.max is None:
            raise ValueError("give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("min is above max")
        return self


def _bound(description: str) -> Any:
    return Field(None, description=description)


class PromotionRequire(_Strict):
    """Thresholds on the test-split evaluation; only the figures of the job's task apply
    (precision, recall and f1 are the positive class's, so they need a binary target)."""

    accuracy: MetricBound | None = _bound("Classification, anomaly detection.")
    precision: MetricBound | None = _bound("Positive class; classification, anomaly detection.")
    recall: MetricBound | None = _bound("Positive class; classification, anomaly detection.")
    f1: MetricBound | None = _bound("Positive class; classification, anomaly detection.")
    precision_macro: MetricBound | None = _bound("Classification, anomaly detection.")
    recall_macro: MetricBound | None = _bound("Classification, anomaly detection.")
    f1_macro: MetricBound | None = _bound("Classification, anomaly detection.")
    roc_auc: MetricBound | None = _bound("Anomaly detection.")
    mae: MetricBound | None = _bound("Regression, in the target's units.")
    rmse: MetricBound | None = _bound("Regression, in the target's units.")
    r2: MetricBound | None = _bound("Regression.")
    audit_passed: bool | None = Field(
        None, description="true: the fairness audit (audit.thresholds and audit.gate) must pass."
    )

    def bounds(self) -> dict[str, MetricBound]:
        return {
            name: bound
            for name in PromotionMetric.__args__  # type: ignore[attr-defined]
            if (bound := getattr(self, name)) is not None
        }


class RegressionLimit(_Strict):
    metric: PromotionMetric = Field(description="The test-split figure compared.")
    tolerance: float = Field(
        ge=0,
        description="How much worse than the model serving the endpoint it may be (absolute, "
        "in the figure's units; 0: at least as good).",
    )


class ServingSpec(_Strict):
    """How an endpoint serves the model and watches it: replicas, overload, batching,
    prediction logging and drift. Set in the spec; a promotion request may override it."""

    min_replicas: int = Field(1, ge=1, le=100, description="Replicas kept running.")
    max_replicas: int = Field(
        1,
        ge=1,
        le=100,
        description="Serve's autoscaler adds replicas up to this when requests queue "
        "(autoscaling is on when it is above min_replicas).",
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, le=1000, description="Requests in flight per replica the autoscaler aims at."
    )
    max_ongoing_requests: int = Field(
        16, ge=1, le=10_000, description="Requests a replica takes at once; more wait in a queue."
    )
    max_queued_requests: int = Field(
        100,
        ge=1,
        le=100_000,
        description="Requests waiting for a replica beyond which new ones get 503 with "
        "Retry-After at once, instead of hanging.",
    )
    max_batch_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="Requests gathered into one forward pass (dynamic batching; 1: off). A "
        "replica then takes at least this many requests at once (max_ongoing_requests).",
    )
    batch_wait_timeout_ms: float = Field(
        2.0,
        ge=0,
        le=1000,
        description="How long the first request of a batch waits for others.",
    )
    log_sample_rate: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Fraction of requests whose inputs and predictions are logged for "
        "monitoring (live accuracy with feedback, fairness, drift).",
    )
    drift_threshold: float = Field(
        0.2,
        gt=0,
        description="Population stability index of a feature, logged inputs against the "
        "training split, above which the endpoint raises a drift alert.",
    )
    monitoring_window: int = Field(
        1000,
        ge=10,
        le=1_000_000,
        description="Most recent logged predictions the live figures are computed over.",
    )

    @model_validator(mode="after")
    def _replicas_ordered(self) -> ServingSpec:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas is below min_replicas")
        return self


class PromotionSpec(_Strict):
    """Gates a promotion must pass; an override with a written reason bypasses them."""

    require: PromotionRequire = Field(
        default_factory=lambda: PromotionRequire(),
        description="Metric thresholds on the test split, and whether the audit must pass.",
    )
    max_regression: RegressionLimit | None = Field(
        None,
        description="The new model must not be worse than the one serving the endpoint by more "
        "than tolerance on this figure (no check when nothing serves there yet).",
    )
    auto: bool = Field(
        False, description="Promote to auto_endpoint when the job succeeds and the gates pass."
    )
    auto_endpoint: str | None = Field(
        None, pattern=ENDPOINT_PATTERN, description="The endpoint auto promotion serves at."
    )
    serving: ServingSpec = Field(
        default_factory=lambda: ServingSpec(),
        description="Replicas, overload, batching and monitoring of the endpoint that serves "
        "this job's model.",
    )
    compress: Literal["none", "dynamic_int8"] = Field(
        "none",
        description="Serve a compressed variant of the best model: dynamic_int8 quantizes the "
        "weights of its Linear, LSTM and GRU layers to 8-bit integers (torch dynamic "
        "quantization; activations are quantized per batch at run time). The variant is "
        "evaluated and audited again on the test split, its size, CPU latency and metrics are "
        "reported beside the original's (GET /v1/jobs/{id}/evaluation, 'compression'), and it "
        "is the candidate promoted by default (candidate 'best' still promotes the original).",
    )
    prune: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Zero this fraction of the weights of the Linear and Conv layers, smallest "
        "magnitude first over all of them together (global L1 pruning), for the compressed "
        "variant; with compress, pruning comes first. Zeros shrink a bundle only when it is "
        "stored compressed (deflated): the report gives both sizes.",
    )

    @model_validator(mode="after")
    def _auto_needs_endpoint(self) -> PromotionSpec:
        if self.auto and self.auto_endpoint is None:
            raise ValueError("auto promotion needs auto_endpoint")
        return self

    @property
    def compression_requested(self) -> bool:
        """Whether the job builds a compressed candidate (promotion.compress or .prune)."""
        return self.compress != "none" or self.prune is not None

    def metrics(self) -> dict[tuple[str, ...], str]:
        """Every figure the gates name, by the spec path that names it."""
        out: dict[tuple[str, ...], str] = {
            ("promotion", "require", name): name for name in self.require.bounds()
        }
        if self.max_regression is not None:
            out[("promotion", "max_regression", "metric")] = self.max_regression.metric
        return out


class JobSpec(_Strict):
    name: str = Field(pattern=NAME_PATTERN, description="A short name for the job.")
    project: str | None = Field(
        None,
        pattern=r"^[a-z][a-z0-9-]{0,62}$",
        description="The project the job belongs to (its dataset's, or a built-in dataset's "
        "user's own): default, your only project (an admin's: 'default').",
    )
    task: Literal["auto", "classification", "regression", "anomaly_detection"] = Field(
        "auto",
        description="What is learnt. auto: regression when the target is a number with more "
        "than 20 distinct values or any fraction, classification otherwise; an autoencoder "
        "means anomaly_detection (the target then marks anomalies: 1/true, or "
        "audit.positive_label).",
    )
    dataset: DatasetRef
    preprocessing: PreprocessingSpec = Field(default_factory=lambda: PreprocessingSpec())
    model: ModelSpec = Field(
        default_factory=lambda: MLPSpec(),
        description="The network: mlp, cnn (images), lstm/gru (sequences), transformer "
        "(sequences or tables), autoencoder (anomaly detection).",
    )
    training: TrainingSpec = Field(default_factory=lambda: TrainingSpec())
    search: SearchSpec = Field(default_factory=lambda: SearchSpec())
    resources: ResourcesSpec = Field(default_factory=lambda: ResourcesSpec())
    audit: AuditSpec = Field(default_factory=lambda: AuditSpec())
    promotion: PromotionSpec = Field(
        default_factory=lambda: PromotionSpec(),
        description="Gates for promoting the model to an endpoint, and auto promotion.",
    )

    @model_validator(mode="after")
    def _task_and_metric(self) -> JobSpec:
        autoencoder = self.model.architecture == "autoencoder"
        if autoencoder and self.task == "auto":
            self.task = "anomaly_detection"
        if autoencoder != (self.task == "anomaly_detection"):
            raise ValueError(
                "anomaly_detection is learnt by model.architecture 'autoencoder', and an "
                "autoencoder only detects anomalies"
            )
        if self.search.metric is None and self.task != "auto":
            self.search.metric = TASK_METRICS[self.task][0]  # type: ignore[assignment]
        return self

    def with_task(self, task: Task) -> JobSpec:
        """This spec with its task settled (and the metric defaulted from it)."""
        if self.task == task:
            return self
        # Only what the user set: checks that ask whether a field was given (num_trials on a
        # grid) must see the same spec.
        given = self.model_dump(mode="json", exclude_unset=True)
        return JobSpec.model_validate({**given, "task": task})

    @property
    def resolved_task(self) -> Task:
        """The task; 'auto' before the data is seen reads as classification."""
        return "classification" if self.task == "auto" else self.task


# Sections whose fields a search may set. The dataset, the search itself and the audit are
# fixed for a job: searching them would compare trials on different data or goals.
SEARCHABLE_SECTIONS = ("model", "training", "preprocessing")


@dataclass(frozen=True)
class FieldError:
    loc: tuple[str | int, ...]
    msg: str

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg}


_MODEL_TAGS = frozenset({"mlp", "cnn", "rnn", "transformer", "autoencoder"})


def validation_errors(exc: ValidationError) -> list[FieldError]:
    """Pydantic's errors as field errors whose paths are the spec's own: pydantic puts the
    union member's tag into the path of an error inside ``model`` (model.cnn.dropout), and
    reports an unknown architecture at ``model``."""
    out = []
    for e in exc.errors():
        loc = tuple(e["loc"])
        if len(loc) >= 2 and loc[0] == "model" and loc[1] in _MODEL_TAGS:
            loc = (loc[0], *loc[2:])
        if e["type"] == "architecture":
            loc = (*loc, "architecture")
        out.append(FieldError(loc, e["msg"]))
    return out


def _field_model(model: type[BaseModel], name: str) -> type[BaseModel] | None:
    field = model.model_fields[name]
    annotation = field.annotation
    for candidate in getattr(annotation, "__args__", ()) or (annotation,):
        # A tagged union member is Annotated[Model, Tag(...)]: look through the annotation.
        candidate = getattr(candidate, "__origin__", candidate)
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def resolve_path(path: str, spec: JobSpec | None = None) -> str | None:
    """Return why ``path`` names no searchable field, or None when it does.

    With ``spec``, sections whose type depends on a value (``model`` by its architecture) are
    resolved by the spec's own; without, by their first variant (an MLP).
    """
    parts = path.split(".")
    if parts[0] not in SEARCHABLE_SECTIONS:
        return f"'{path}' is not searchable: paths start with one of {list(SEARCHABLE_SECTIONS)}"
    model: type[BaseModel] | None = JobSpec
    node: Any = spec
    for i, part in enumerate(parts):
        if model is None or part not in model.model_fields:
            where = f" of model '{node.architecture}'" if i and parts[0] == "model" and node else ""
            return f"'{path}' names no field{where or ' of the spec'}"
        value = getattr(node, part, None) if node is not None else None
        inner = type(value) if isinstance(value, BaseModel) else _field_model(model, part)
        if i == len(parts) - 1:
            if inner is not None:
                return f"'{path}' is a section; name one of its fields"
            return None
        model, node = inner, value
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
        natural = natural_mode(s.resolved_metric)
        if s.mode != natural:
            errors.append(
                FieldError(
                    ("search", "mode"),
                    f"metric '{s.resolved_metric}' is optimised with mode '{natural}', "
                    f"not '{s.mode}'",
                )
            )
    errors += check_task(spec)
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
        why = resolve_path(path, spec)
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


def check_task(spec: JobSpec) -> list[FieldError]:
    """Problems between the task and the options that only fit some tasks."""
    if spec.task == "auto":
        return []
    task = spec.task
    errors: list[FieldError] = []
    allowed = TASK_METRICS[task]
    if spec.search.metric is not None and spec.search.metric not in allowed:
        errors.append(
            FieldError(
                ("search", "metric"),
                f"'{spec.search.metric}' is not a {task} metric; use one of {list(allowed)}",
            )
        )
    es = spec.training.early_stopping
    if es is not None and es.metric not in allowed:
        errors.append(
            FieldError(
                ("training", "early_stopping", "metric"),
                f"'{es.metric}' is not a {task} metric; use one of {list(allowed)}",
            )
        )
    t = spec.training
    if t.loss in ("mse", "mae", "huber") and task == "classification":
        errors.append(FieldError(("training", "loss"), f"'{t.loss}' is a regression loss"))
    if t.loss in ("cross_entropy", "mae", "huber") and task == "anomaly_detection":
        errors.append(FieldError(("training", "loss"), "an autoencoder trains with mse"))
    if t.loss == "cross_entropy" and task == "regression":
        errors.append(FieldError(("training", "loss"), "cross_entropy is a classification loss"))
    if t.class_weights != "none" and task != "classification":
        errors.append(
            FieldError(("training", "class_weights"), "class weights need a classification task")
        )
    for loc, metric in spec.promotion.metrics().items():
        if metric not in PROMOTION_METRICS[task]:
            errors.append(
                FieldError(
                    loc,
                    f"'{metric}' is not in a {task} evaluation; use one of "
                    f"{list(PROMOTION_METRICS[task])}",
                )
            )
    if spec.audit.mitigation is not None and task != "classification":
        errors.append(FieldError(("audit", "mitigation"), "mitigation needs a classification task"))
    aug = spec.preprocessing.augmentation
    if aug is not None and aug.mixup_alpha and task != "classification":
        errors.append(
            FieldError(
                ("preprocessing", "augmentation", "mixup_alpha"), "mixup needs classification"
            )
        )
    return errors


# Which input ranks (dimensions of one row's array) each architecture reads; None: tables.
_ARRAY_RANKS: dict[str, tuple[int, ...]] = {
    "cnn": (2, 3),
    "lstm": (1, 2),
    "gru": (1, 2),
    "transformer": (1, 2),
}


def check_model_inputs(
    spec: JobSpec, kinds: dict[str, str | None], shapes: dict[str, list[int] | None]
) -> list[FieldError]:
    """Problems between the architecture and the input columns it would read (by kind and, for
    array columns, by the shape recorded when the dataset was registered)."""
    arch = spec.model.architecture
    features = feature_columns(spec, list(kinds))
    errors: list[FieldError] = []
    if spec.dataset.sequence is not None:
        return _check_windows(spec, kinds, features)
    arrays = [f for f in features if kinds.get(f) == "array"]
    needs_array = arch in ("cnn", "lstm", "gru")
    what = "an image" if arch == "cnn" else "a sequence"
    if needs_array and not arrays:
        errors.append(
            FieldError(
                ("model", "architecture"),
                f"{arch} needs {what} column (an array per row); the inputs {features} are "
                "plain columns: name one array column in dataset.features",
            )
        )
    elif (needs_array or (arch == "transformer" and arrays)) and features != arrays[:1]:
        errors.append(
            FieldError(
                ("dataset", "features"),
                f"{arch} reads exactly one array column; the inputs would be {features}",
            )
        )
    elif arrays and arch in _ARRAY_RANKS:
        shape = shapes.get(arrays[0])
        if shape is not None and len(shape) not in _ARRAY_RANKS[arch]:
            ranks = " or ".join(f"{r}-D" for r in _ARRAY_RANKS[arch])
            errors.append(
                FieldError(
                    ("dataset", "features"),
                    f"column '{arrays[0]}' holds arrays of shape {shape}; {arch} reads {ranks} "
                    f"arrays ({what})",
                )
            )
    aug = spec.preprocessing.augmentation
    if aug is not None and arch != "cnn":
        for name in ("flip", "rotation_degrees", "shift"):
            if getattr(aug, name):
                errors.append(
                    FieldError(
                        ("preprocessing", "augmentation", name), "image augmentation needs a cnn"
                    )
                )
    return errors


def _check_windows(
    spec: JobSpec, kinds: dict[str, str | None], features: list[str]
) -> list[FieldError]:
    w = spec.dataset.sequence
    assert w is not None
    errors: list[FieldError] = []
    for name in (w.time_column, w.id_column):
        if name is not None and name not in kinds:
            errors.append(
                FieldError(("dataset", "sequence"), f"column '{name}' is not in the dataset")
            )
    plain = [f for f in features if kinds.get(f) != "numeric"]
    if plain:
        errors.append(
            FieldError(
                ("dataset", "features"),
                f"sequence windows are built from numeric columns; {plain} are not",
            )
        )
    if spec.model.architecture == "cnn":
        errors.append(FieldError(("model", "architecture"), "a cnn reads images, not sequences"))
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
        size = s.trial_count
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
    if spec.dataset.split.column:
        excluded.add(spec.dataset.split.column)
    w = spec.dataset.sequence
    if w is not None:
        excluded |= {w.time_column, w.id_column} - {None}  # type: ignore[arg-type]
    if not spec.audit.use_as_features:
        excluded |= set(spec.audit.sensitive_features)
    return [c for c in columns if c not in excluded]


def effective_spec(spec: JobSpec, overrides: dict[str, Any]) -> JobSpec:
    """The spec one trial trains with: the job's spec with the trial's sampled values."""
    if not overrides:
        return spec
    return JobSpec.model_validate(apply_overrides(spec.model_dump(mode="json"), overrides))
