"""The business requirements: one typed spec (``tidal.yaml``) that drives the whole loop.

The spec is a pydantic v2 schema that rejects unknown keys and describes every field, so
one definition drives loading, the JSON Schema (``tidal spec schema``), the docs and
``tidal spec show``. Loading reports every problem at once, each with its field path and
how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import timedelta
from enum import Enum
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag, ValidationError,
                      field_validator, model_validator)

from tidal.errors import Problem, SpecError


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=True)


class Task(str, Enum):
    binary = "binary"
    regression = "regression"


class FeatureType(str, Enum):
    numeric = "numeric"
    categorical = "categorical"
    boolean = "boolean"
    datetime = "datetime"


class Feature(_Model):
    """One input column and the constraints a valid value must meet."""

    type: FeatureType = Field(description="Kind of value: numeric, categorical, boolean or datetime.")
    nullable: bool = Field(True, description="Whether a missing value is acceptable.")
    min: float | None = Field(None, description="Smallest valid value (numeric only).")
    max: float | None = Field(None, description="Largest valid value (numeric only).")
    allowed: list[str] | None = Field(
        None, description="Valid values (categorical only); others are quarantined at ingestion.")
    description: str = Field("", description="What the column means, for people and model cards.")

    @model_validator(mode="after")
    def _constraints_fit_type(self) -> "Feature":
        if (self.min is not None or self.max is not None) and self.type != "numeric":
            raise ValueError("min/max apply only to numeric features")
        if self.allowed is not None and self.type != "categorical":
            raise ValueError("allowed applies only to categorical features")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class BinaryCosts(_Model):
    """What each outcome of a binary decision costs the business (negative = a gain)."""

    true_positive: float = Field(0.0, description="Cost of acting on a real positive (negative = value gained).")
    false_positive: float = Field(1.0, description="Cost of acting on a negative (e.g. a wasted offer).")
    true_negative: float = Field(0.0, description="Cost of not acting on a real negative.")
    false_negative: float = Field(1.0, description="Cost of missing a real positive (e.g. a lost customer).")
    act: str = Field("act", description="Name of the decision taken when the score passes the threshold.")
    no_act: str = Field("no_action", description="Name of the decision taken otherwise.")


class RegressionCosts(_Model):
    """What an error of one unit costs, by direction."""

    under_per_unit: float = Field(1.0, ge=0, description="Cost of predicting one unit too low.")
    over_per_unit: float = Field(1.0, ge=0, description="Cost of predicting one unit too high.")


class MinMetric(_Model):
    name: Literal["auc", "pr_auc", "rmse", "mae"] = Field(description="Metric the model must reach.")
    value: float = Field(description="Threshold: a floor for auc/pr_auc, a ceiling for rmse/mae.")


class Guardrails(_Model):
    """Budgets a model must respect to be promoted."""

    p99_latency_ms: float = Field(50.0, gt=0, description="Largest acceptable p99 latency of one prediction, ms.")
    max_model_size_mb: float = Field(50.0, gt=0, description="Largest acceptable model bundle size, MB.")
    min_metric: MinMetric | None = Field(None, description="Metric floor (or ceiling) a model must reach.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Largest live share of failed predictions before a new version is rolled back.")
    min_live_requests: int = Field(200, gt=0, description="Requests a new version must have served before its live error rate and p99 are judged.")


class Fairness(_Model):
    """Sensitive attributes and how far apart their groups may be treated (binary tasks).

    Gaps are measured on the held-out rows at the cost-optimal threshold, over the groups of
    each sensitive attribute that have at least ``min_group_rows`` rows.
    """

    sensitive: list[str] = Field(
        default_factory=list, description="Categorical or boolean features whose groups are compared "
                                          "(e.g. [gender, SeniorCitizen]); reported per group in every evaluation.")
    max_demographic_parity_difference: float | None = Field(
        None, ge=0, le=1, description="Largest gap between groups' act rates (share of rows acted on); "
                                      "none reports it without judging.")
    max_equal_opportunity_difference: float | None = Field(
        None, ge=0, le=1, description="Largest gap between groups' true positive rates (share of actual positives "
                                      "acted on); none reports it without judging.")
    min_group_rows: int = Field(
        30, gt=0, description="Groups with fewer held-out rows (fewer actual positives, for the equal opportunity "
                              "difference) are reported but not judged (too noisy).")


class _SourceBase(_Model):
    name: str | None = Field(None, description="Name of the source in reports and state (default: derived from it).")
    trust: Literal["high", "low"] = Field("high", description="Trust level; low-trust sources get stricter checks.")


class FileSource(_SourceBase):
    """One CSV or Parquet file."""

    kind: Literal["file"] = Field("file", description="A single CSV or Parquet file.")
    path: str = Field(description="File path, relative to the spec's folder.")


class FolderSource(_SourceBase):
    """A folder watched for new files; each new file is one batch."""

    kind: Literal["folder"] = Field(description="A folder watched for new files.")
    path: str = Field(description="Folder path, relative to the spec's folder.")
    pattern: str = Field("*.csv", description="Glob of the files to take, e.g. '*.parquet'.")


class SqlSource(_SourceBase):
    """A SQL query read incrementally by a watermark column."""

    kind: Literal["sql"] = Field(description="A SQL query against a database.")
    url: str = Field(description="SQLAlchemy URL, e.g. postgresql://user@host/db.")
    query: str = Field(description="A table name or a SELECT; new rows are those past the watermark.")
    watermark: str = Field(description="Column that grows with new or changed rows, e.g. updated_at or an id.")
    max_rows: int = Field(100_000, gt=0, description="Most rows per batch (a batch never splits equal watermarks).")


class HttpSource(_SourceBase):
    """Batches pushed to POST /v1/ingest."""

    kind: Literal["http"] = Field(description="Batches pushed over HTTP to POST /v1/ingest.")
    token_env: str = Field("TIDAL_INGEST_TOKEN", description="Environment variable holding the bearer token.")
    max_bytes: int = Field(10_000_000, gt=0, description="Largest accepted request body, bytes.")


class RedisStreamSource(_SourceBase):
    """A Redis Stream read through a consumer group, acknowledged after each batch commits."""

    kind: Literal["redis_stream"] = Field(description="A Redis Stream read through a consumer group.")
    url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL.")
    stream: str = Field(description="Stream key.")
    group: str = Field("tidal", description="Consumer group name.")
    consumer: str = Field("ingester", description="Consumer name within the group.")
    batch_size: int = Field(1000, gt=0, description="Most messages per batch.")
    block_ms: int = Field(1000, ge=0, description="How long a read waits for new messages, ms.")


def _source_kind(value: Any) -> str | None:
    return value.get("kind", "file") if isinstance(value, dict) else getattr(value, "kind", None)


Source = Annotated[
    Annotated[FileSource, Tag("file")] | Annotated[FolderSource, Tag("folder")] | Annotated[SqlSource, Tag("sql")]
    | Annotated[HttpSource, Tag("http")] | Annotated[RedisStreamSource, Tag("redis_stream")],
    Discriminator(_source_kind)]


LookupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")]


class Lookup(_Model):
    """A second source joined to the main rows point-in-time (e.g. weather by airport and hour).

    Each main row gets, per key, the newest lookup reading taken at or before its event time
    (never a later one), in training, batch scoring and online serving alike.
    """

    source: Source = Field(description="Where the lookup's rows come from (any source kind).")
    keys: list[str] = Field(min_length=1, description="Columns present in both the main data and the lookup, "
                                                      "matched exactly (e.g. [origin]).")
    time: str = Field(description="The lookup's timestamp column: when a reading was taken (e.g. time_hour).")
    features: dict[str, Feature] = Field(min_length=1, description="Lookup columns used as model features, by name "
                                                                   "(typed and checked like the main features).")
    max_age_hours: float | None = Field(None, gt=0, description="Readings older than this at the event time count "
                                                                "as missing; none means any older reading is used.")


_WINDOW_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_WINDOW = re.compile(r"^([1-9][0-9]*)([smhdw])$")


def parse_window(text: str) -> timedelta:
    """A window such as ``"30m"``, ``"24h"`` or ``"7d"`` as a timedelta (units s, m, h, d, w)."""
    match = _WINDOW.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError("window must be a positive whole number and a unit (s, m, h, d or w), such as 30m, 24h "
                         "or 7d")
    return timedelta(**{_WINDOW_UNITS[match.group(2)]: int(match.group(1))})


class HistoryFeature(_Model):
    """An aggregate of the entity's earlier events over a time window (e.g. a card's spend over 7 days).

    A row at time t gets the aggregate over the entity's events in (p - window, p], where p
    is the time of the entity's newest event strictly before t (Feast's point-in-time join):
    never the row itself, nor anything at or after its time. An entity with no earlier event
    gets count 0 and a missing sum, mean, min and max. Computed by the server from the lake
    and the online store, so requests never carry it.
    """

    agg: Literal["count", "sum", "mean", "min", "max"] = Field(
        description="count (events in the window), or sum, mean, min or max of column over them (missing values "
                    "skipped; missing when the window holds no value).")
    column: str | None = Field(None, description="The numeric feature aggregated (not for count).")
    window: str = Field(description="How far back from the entity's newest earlier event: a whole number and a "
                                    "unit, s, m, h, d or w (e.g. 30m, 24h, 7d).")
    description: str = Field("", description="What the feature means, for people and model cards.")

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        parse_window(value)
        return value

    @model_validator(mode="after")
    def _check(self) -> "HistoryFeature":
        if self.agg == "count" and self.column is not None:
            raise ValueError("count counts events and takes no column; remove column")
        if self.agg != "count" and self.column is None:
            raise ValueError(f"{self.agg} needs the numeric column to aggregate; add column")
        return self

    @property
    def period(self) -> timedelta:
        return parse_window(self.window)


Severity = Literal["warn", "quarantine", "reject"]


class Validation(_Model):
    """Checks each batch must pass, beyond each row's schema, and what a failure does.

    ``warn`` only reports; ``quarantine`` holds the rows (the whole batch, for a batch-level
    check) in quarantine until a person releases them; ``reject`` refuses the batch.
    Statistical checks compare the batch with the trusted reference (the accepted data).
    """

    schema_severity: Literal["quarantine", "reject"] = Field(
        "quarantine", description="What a row failing a type, range, allowed-value, null or key-uniqueness check does.")
    max_null_share: float = Field(0.5, ge=0, le=1, description="Largest share of nulls in any column of a batch.")
    null_severity: Severity = Field("warn", description="What a column over max_null_share does.")
    unique_key: bool = Field(True, description="Rows repeating an (entity key, event time) pair within a batch are quarantined.")
    max_age_days: float | None = Field(None, gt=0, description="Newest event time must be at most this old (freshness); needs event_time.")
    freshness_severity: Severity = Field("warn", description="What a stale batch does.")
    min_rows: int = Field(1, ge=0, description="Fewest rows a batch may have.")
    max_rows: int | None = Field(None, gt=0, description="Most rows a batch may have.")
    volume_severity: Severity = Field("warn", description="What a batch outside min_rows/max_rows does.")
    min_reference_rows: int = Field(500, gt=0, description="Accepted rows needed before statistical checks run.")
    feature_psi: float = Field(0.25, gt=0, description="PSI above which a feature of the batch has shifted from the reference.")
    feature_shift_severity: Severity = Field("warn", description="What a shifted feature does.")
    label_shift: float = Field(0.15, gt=0, description="Largest change of the positive rate (binary) or of the target mean in reference standard deviations (regression).")
    label_shift_severity: Severity = Field("warn", description="What a shifted label mix does (real mixes drift too, so it warns by default).")
    label_consistency: float = Field(0.75, gt=0, lt=1, description="Hold a batch whose labels follow the production model's scores less than this share as closely as the held-out rows did (label flipping).")
    label_consistency_severity: Severity = Field("quarantine", description="What a batch with inconsistent labels does.")
    duplicate_excess: float = Field(0.05, gt=0, le=1, description="Largest excess share of duplicated rows over the reference's own rate at the same size.")
    duplicate_severity: Severity = Field("quarantine", description="What a flood of duplicates or near-duplicates does.")
    outlier_excess: float = Field(0.04, gt=0, le=1, description="Largest excess share of rows outside the reference's range over the reference's own rate.")
    outlier_severity: Severity = Field("quarantine", description="What a flood of rows far outside the reference does.")
    low_trust_factor: float = Field(0.5, gt=0, le=1, description="Statistical thresholds are multiplied by this for low-trust sources, and their warnings become quarantines.")
    min_batch_for_statistics: int = Field(200, gt=0, description="Batches smaller than this skip the statistical checks (too noisy).")


class Monitoring(_Model):
    """When drift or performance becomes an alert."""

    window: int = Field(1000, gt=0, description="Number of most recent predictions the monitor examines.")
    min_samples: int = Field(100, gt=0, description="Fewest predictions needed for a drift verdict.")
    psi_threshold: float = Field(0.2, gt=0, description="PSI above which a numeric feature or the score has drifted.")
    p_value: float = Field(0.01, gt=0, lt=1, description="KS / chi-square p-value below which a feature has drifted.")
    max_drifted_share: float = Field(
        0.2, ge=0, le=1, description="Alert when more than this share of features has drifted.")
    min_labels: int = Field(50, gt=0, description="Fewest labelled predictions needed to judge performance.")
    max_cost_increase: float = Field(
        0.25, ge=0, description="Alert when realised cost per prediction exceeds training's by this fraction.")


class Retraining(_Model):
    """The policy that decides when to train a challenger, and whether it may replace the champion."""

    on_drift: bool = Field(True, description="Retrain when the monitor raises a drift alert.")
    on_performance: bool = Field(True, description="Retrain when the monitor raises a performance alert.")
    min_new_labels: int = Field(1000, gt=0, description="Retrain once this many new labelled rows exist.")
    holdout_share: float = Field(
        0.4, gt=0, lt=1, description="Share of the newest labelled rows kept out of training to compare models.")
    min_improvement: float = Field(
        0.0, ge=0, description="Relative cost reduction the challenger needs over the champion to be promoted.")
    auto_promote: bool = Field(True, description="Promote a winning challenger without a person.")


# tidal's LightGBM defaults, measured on Telco churn, bank marketing and credit-card fraud (bench/bench_quality.py);
# lambda_l2 keeps leaf values finite when positives are rare (without it fraud diverges after one round)
LIGHTGBM_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "learning_rate": 0.03, "num_leaves": 15, "min_data_in_leaf": 20, "feature_fraction": 0.8,
    "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0})


class Training(_Model):
    """How models are fitted."""

    test_size: float = Field(0.2, gt=0, lt=1, description="Share of rows held out for evaluation (the newest, with an event time).")
    valid_size: float = Field(0.15, gt=0, lt=1, description="Share of training rows used for early stopping and the threshold.")
    num_boost_round: int = Field(2000, gt=0, description="Most boosting rounds; early stopping picks fewer.")
    early_stopping_rounds: int = Field(
        100, gt=0, description="Rounds without improvement of the validation log-loss (l2 for regression) "
                               "before stopping.")
    seed: int = Field(7, description="Random seed, for reproducible runs.")
    imbalance: Literal["auto", "none", "balanced"] = Field(
        "auto", description="Class imbalance (binary): auto weights positives by sqrt(negatives/positives) when "
                            "they are under 5% of the training rows; balanced weights them by "
                            "negatives/positives; none never weights. Weighted models are not calibrated; the "
                            "cost-optimal threshold is chosen on the validation rows either way.")
    params: dict[str, Any] = Field(
        default_factory=lambda: dict(LIGHTGBM_DEFAULTS),
        description="LightGBM parameters passed through, over tidal's defaults (a key left out keeps its default).")


class Serving(_Model):
    """How the HTTP server behaves."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, gt=0, lt=65536, description="Port to bind.")
    log_buffer_size: int = Field(100_000, gt=0, description="Most predictions held in memory before the flush; more are dropped and counted.")
    flush_interval_s: float = Field(1.0, gt=0, description="Seconds between flushes of the prediction log to the lake.")
    log_writer: Literal["process", "thread"] = Field("process", description="Who turns the prediction log into Arrow and commits it: a writer process beside the server (keeps that work off the event loop's interpreter lock) or a thread of the server.")
    reload_interval_s: float = Field(1.0, gt=0, description="Seconds between checks for a new production model.")
    admin_token_env: str = Field("TIDAL_ADMIN_TOKEN", description="Environment variable holding the bearer token of the admin routes (quarantine); unset disables them.")
    canary_share: float = Field(0.1, gt=0, lt=1, description="Share of traffic a canary version answers (sticky per entity key).")
    auto_rollback: bool = Field(True, description="Roll back a canary or a newly promoted version whose live error rate or p99 latency breaks the guardrails.")


class RegistryPolicy(_Model):
    """What the model registry demands before a version may answer traffic."""

    approval_required_for: list[Literal["canary", "production"]] = Field(
        default_factory=list,
        description="Stages a model version may enter only after a person approves it (`tidal approve VERSION "
                    "--reason WHY`); --force skips the guardrails, never this. Automatic retraining leaves a "
                    "winning challenger awaiting approval and raises an alert. Empty: no approval needed.")


NAMESPACE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class OnlineStore(_Model):
    """Where serving reads each entity's newest history features (see tidal.features.store)."""

    kind: Literal["memory", "redis"] = Field(
        "memory", description="memory: a dict inside the serving process (the fastest; one process); "
                              "redis: a Redis server that several serving processes share.")
    url: str | None = Field(None, description="Redis URL (kind redis only); default redis://127.0.0.1:6379/0.")
    namespace: str | None = Field(
        None, pattern=NAMESPACE_PATTERN, description="Prefix of the Redis keys, tidal:NAMESPACE:ENTITY (kind redis "
                                                     "only; letters, digits, _ . -); default the spec's name, so "
                                                     "two use cases sharing a server never collide.")

    @model_validator(mode="after")
    def _redis_options_need_redis(self) -> "OnlineStore":
        if self.kind == "memory" and (self.url is not None or self.namespace is not None):
            raise ValueError("url and namespace apply only to kind redis; set kind: redis or remove them")
        return self


class _DerivedBase(_Model):
    description: str = Field("", description="What the derived feature means, for people and model cards.")


class LogFeature(_DerivedBase):
    """log(1 + x) of a numeric feature; a value at or below -1 (or missing) gives a missing value."""

    kind: Literal["log"] = Field(description="log1p of a numeric feature.")
    column: str = Field(description="The numeric feature to take the log of.")


class ClipFeature(_DerivedBase):
    """A numeric feature limited to [min, max]; a missing value stays missing."""

    kind: Literal["clip"] = Field(description="A numeric feature clipped to [min, max].")
    column: str = Field(description="The numeric feature to clip.")
    min: float | None = Field(None, description="Values below this become it (none: no lower limit).")
    max: float | None = Field(None, description="Values above this become it (none: no upper limit).")

    @model_validator(mode="after")
    def _limits(self) -> "ClipFeature":
        if self.min is None and self.max is None:
            raise ValueError("clip needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min ({self.min}) is greater than max ({self.max})")
        return self


class BucketizeFeature(_DerivedBase):
    """The index of the bucket a numeric value falls in, as a number (0 below the first bound)."""

    kind: Literal["bucketize"] = Field(description="A numeric feature as its bucket index.")
    column: str = Field(description="The numeric feature to bucket.")
    bounds: list[float] = Field(min_length=1, description="Bucket bounds, strictly increasing; a value equal to a "
                                                          "bound goes to the bucket above it (bucket i holds "
                                                          "bounds[i-1] <= x < bounds[i]). Missing stays missing.")

    @model_validator(mode="after")
    def _sorted(self) -> "BucketizeFeature":
        if any(b <= a for a, b in zip(self.bounds, self.bounds[1:])):
            raise ValueError(f"bounds must be strictly increasing, got {self.bounds}")
        return self


class RatioFeature(_DerivedBase):
    """numerator / denominator of two numeric features; missing when either is missing, the denominator is 0
    or the quotient overflows."""

    kind: Literal["ratio"] = Field(description="The ratio of two numeric features.")
    numerator: str = Field(description="The numeric feature divided.")
    denominator: str = Field(description="The numeric feature dividing it.")


class TargetEncodingFeature(_DerivedBase):
    """A categorical feature as its smoothed target mean (binary: positive rate), fitted on the training rows.

    Training rows get out-of-fold values (each fold encoded by the other folds); every row
    scored later (validation, test, batch, online) gets the encoding fitted on all training rows.
    """

    kind: Literal["target_encoding"] = Field(description="A categorical feature as its smoothed target mean.")
    column: str = Field(description="The categorical feature to encode.")
    folds: int = Field(5, ge=2, le=50, description="Folds of the out-of-fold encoding of the training rows.")
    smoothing: float = Field(20.0, ge=0, description="Weight of the prior (the overall target mean) in rows: a "
                                                     "category's value is (sum + smoothing * prior) / (count + "
                                                     "smoothing). Unseen categories get the prior.")


class PythonFeature(_DerivedBase):
    """A Python function registered with ``@tidal.features.register_transform(NAME)``.

    It receives one NumPy array per input (numbers as float64 with NaN for missing,
    categories as text with None) and the params as keyword arguments, and returns one float
    per row (an infinite one counts as missing). The bundle stores the function's name and
    the sha256 of its source; a process whose function is missing or different refuses to
    load the model.
    """

    kind: Literal["python"] = Field(description="A registered Python function.")
    function: str = Field(description="The name the function is registered under.")
    inputs: list[str] = Field(min_length=1, description="Numeric, boolean or categorical features passed to it, "
                                                        "in order.")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments passed to it (JSON values).")


def _derived_kind(value: Any) -> str | None:
    kind = value.get("kind") if isinstance(value, dict) else getattr(value, "kind", None)
    return f"kind={kind}" if kind in DERIVED_KINDS else None


DERIVED_KINDS = ("log", "clip", "bucketize", "ratio", "target_encoding", "python")

DerivedFeature = Annotated[
    Annotated[LogFeature, Tag("kind=log")] | Annotated[ClipFeature, Tag("kind=clip")]
    | Annotated[BucketizeFeature, Tag("kind=bucketize")] | Annotated[RatioFeature, Tag("kind=ratio")]
    | Annotated[TargetEncodingFeature, Tag("kind=target_encoding")] | Annotated[PythonFeature, Tag("kind=python")],
    Discriminator(_derived_kind, custom_error_type="derived_kind",
                  custom_error_message=f"kind must be one of: {', '.join(DERIVED_KINDS)}")]

PluginName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")]


class Workspace(_Model):
    path: str = Field(".tidal", description="Workspace folder, relative to the spec's folder.")
    metadata_url: str | None = Field(
        None, description="SQLAlchemy URL of the metadata database; default a SQLite file in the workspace.")


class Spec(_Model):
    """A tidal use case: what to predict, from what, and what the business needs of it."""

    name: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_-]*$", description="Name of the use case (letters, digits, _ and -).")
    description: str = Field("", description="What the use case is for.")
    task: Task = Field(description="binary (classification) or regression.")
    target: str = Field(description="Column to predict.")
    positive_class: str | None = Field(None, description="Target value that counts as positive (binary; default '1').")
    entity_key: str | None = Field(None, description="Column identifying the entity (customer, card...), if any.")
    event_time: str | None = Field(None, description="Column giving when the row happened; enables time-aware splits.")
    features: dict[str, Feature] = Field(description="Input columns, by name.")
    exclude: list[str] = Field(default_factory=list, description="Columns never used as features (identifiers, leaks).")
    costs: BinaryCosts | RegressionCosts | None = Field(None, description="Business cost of each kind of error.")
    guardrails: Guardrails = Field(default_factory=Guardrails, description="Budgets for promotion.")
    fairness: Fairness = Field(default_factory=Fairness, description="Sensitive attributes and the largest gaps "
                                                                    "between their groups a model may show to be promoted.")
    sources: list[Source] = Field(default_factory=list, description="Where data comes from.")
    lookups: dict[LookupName, Lookup] = Field(
        default_factory=dict, description="Second sources joined point-in-time on keys and event_time, by name "
                                          "(letters, digits and _); their features are model inputs that requests "
                                          "do not carry.")
    history: dict[LookupName, HistoryFeature] = Field(
        default_factory=dict, description="Aggregates of each entity's earlier events over time windows (count, sum, "
                                          "mean, min, max), by name (letters, digits and _); needs entity_key and "
                                          "event_time. Model inputs that the server computes (online store) and "
                                          "requests do not carry.")
    derived: dict[LookupName, DerivedFeature] = Field(
        default_factory=dict, description="Features computed from the declared ones by the fitted pipeline, by name "
                                          "(letters, digits and _): log, clip, bucketize, ratio, target_encoding or "
                                          "a registered python function. Model inputs after the declared features; "
                                          "requests never carry them.")
    plugins: list[PluginName] = Field(
        default_factory=list, description="Python modules imported where the pipeline is built or loaded, so that "
                                          "their @register_transform functions are registered (e.g. my_pkg.features).")
    validation: Validation = Field(default_factory=Validation, description="Batch checks, the poisoning guard and their severities.")
    monitoring: Monitoring = Field(default_factory=Monitoring, description="Drift and performance alerting.")
    retraining: Retraining = Field(default_factory=Retraining, description="When to retrain and promote.")
    training: Training = Field(default_factory=Training, description="How models are fitted.")
    serving: Serving = Field(default_factory=Serving, description="The HTTP server.")
    registry: RegistryPolicy = Field(default_factory=RegistryPolicy, description="Approval before a model "
                                                                                 "version may serve.")
    online_store: OnlineStore = Field(default_factory=OnlineStore, description="Where serving reads history features: "
                                                                               "in process (memory) or a shared Redis.")
    workspace: Workspace = Field(default_factory=Workspace, description="Where tidal keeps its state.")

    @property
    def positive_label(self) -> str:
        return self.positive_class if self.positive_class is not None else "1"

    @property
    def binary_costs(self) -> BinaryCosts:
        return self.costs if isinstance(self.costs, BinaryCosts) else BinaryCosts()

    @property
    def regression_costs(self) -> RegressionCosts:
        return self.costs if isinstance(self.costs, RegressionCosts) else RegressionCosts()

    @property
    def model_features(self) -> dict[str, Feature]:
        """Every model input: the main features, then each lookup's features, then the history features."""
        out = dict(self.features)
        for lookup in self.lookups.values():
            out.update(lookup.features)
        for name, h in self.history.items():
            out[name] = Feature(type="numeric", description=h.description or _history_text(h))
        return out

    @property
    def lookup_keys(self) -> list[str]:
        """The columns the lookups join on (each once, in spec order)."""
        return list(dict.fromkeys(k for lookup in self.lookups.values() for k in lookup.keys))

    def digest(self) -> str:
        """sha256 of the spec with defaults filled in: the spec's identity in lineage."""
        text = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def _semantic_problems(spec: Spec) -> list[Problem]:
    """Checks across fields that the per-field schema cannot express."""
    problems: list[Problem] = []
    if spec.target in spec.features:
        problems.append(Problem(f"features.{spec.target}", "the target is listed as a feature",
                                "remove it from features"))
    for col in spec.exclude:
        if col in spec.features:
            problems.append(Problem("exclude", f"'{col}' is both excluded and a feature",
                                    f"remove '{col}' from one of them"))
    if spec.event_time and spec.event_time in spec.features:
        problems.append(Problem(f"features.{spec.event_time}", "the event-time column is listed as a feature",
                                "declare it only as event_time (add a datetime feature under another name if needed)"))
    if spec.costs is not None:
        want = BinaryCosts if spec.task == "binary" else RegressionCosts
        if not isinstance(spec.costs, want):
            keys = ", ".join(want.model_fields)
            problems.append(Problem("costs", f"costs do not fit a {spec.task} task", f"use the keys: {keys}"))
    if spec.task == "regression" and spec.positive_class is not None:
        problems.append(Problem("positive_class", "positive_class applies only to binary tasks", "remove it"))
    if not spec.features:
        problems.append(Problem("features", "no features are declared", "declare at least one input column"))
    problems += _lookup_problems(spec)
    problems += _history_problems(spec)
    problems += _fairness_problems(spec)
    problems += _derived_problems(spec)
    return problems


def _derived_problems(spec: Spec) -> list[Problem]:
    """Derived features take declared features of the right type and have names of their own."""
    problems: list[Problem] = []
    features = spec.model_features
    taken = {spec.target: "the target", spec.event_time: "the event time", spec.entity_key: "the entity key",
             **{k: "a lookup key" for k in spec.lookup_keys}, **{n: "a declared feature" for n in features}}
    allowed = {"log": ("numeric",), "clip": ("numeric",), "bucketize": ("numeric",), "ratio": ("numeric",),
               "target_encoding": ("categorical",), "python": ("numeric", "boolean", "categorical")}
    for name, d in spec.derived.items():
        where = f"derived.{name}"
        if name in taken:
            problems.append(Problem(where, f"'{name}' is already {taken[name]}",
                                    "give the derived feature another name"))
        fields = {"ratio": ["numerator", "denominator"], "python": []}.get(d.kind, ["column"])
        inputs = [(f"{where}.{f}", getattr(d, f)) for f in fields]
        if d.kind == "python":
            inputs = [(f"{where}.inputs.{i}", col) for i, col in enumerate(d.inputs)]
        kinds = allowed[d.kind]
        for path, col in inputs:
            if col not in features:
                other = " (derived features cannot take other derived features)" if col in spec.derived else ""
                problems.append(Problem(path, f"'{col}' is not a declared feature{other}",
                                        f"use one of the {' or '.join(kinds)} features: "
                                        + ", ".join(n for n, f in features.items() if f.type in kinds)))
            elif features[col].type not in kinds:
                problems.append(Problem(path, f"'{col}' is a {features[col].type} feature; {d.kind} takes "
                                        f"{' or '.join(kinds)} ones", f"use one of: "
                                        + ", ".join(n for n, f in features.items() if f.type in kinds)))
    return problems


def _fairness_problems(spec: Spec) -> list[Problem]:
    """Sensitive attributes are declared categorical or boolean features; limits need them and a binary task."""
    problems: list[Problem] = []
    f, features = spec.fairness, spec.model_features
    for i, name in enumerate(f.sensitive):
        if name not in features:
            problems.append(Problem(f"fairness.sensitive.{i}", f"'{name}' is not a declared feature",
                                    f"declare it under features, or use one of: {', '.join(features)}"))
        elif features[name].type not in ("categorical", "boolean"):
            problems.append(Problem(f"fairness.sensitive.{i}", f"'{name}' is a {features[name].type} feature; "
                                    "groups need a categorical or boolean one",
                                    f"declare features.{name} as categorical, or bucket it into a new categorical column"))
    limits = f.max_demographic_parity_difference is not None or f.max_equal_opportunity_difference is not None
    if limits and spec.task != "binary":
        problems.append(Problem("fairness", "fairness limits apply only to binary tasks (acting or not)",
                                "remove max_demographic_parity_difference and max_equal_opportunity_difference"))
    elif limits and not f.sensitive:
        problems.append(Problem("fairness.sensitive", "fairness limits are set but no sensitive attribute is named",
                                "list the features to compare under fairness.sensitive"))
    return problems


def _history_text(h: HistoryFeature) -> str:
    what = "events" if h.agg == "count" else f"{h.agg} of {h.column}"
    return f"{what} of the entity over {h.window} up to its newest earlier event"


def _history_problems(spec: Spec) -> list[Problem]:
    """History features need an entity and a time, aggregate numeric features (never the target), and own names."""
    problems: list[Problem] = []
    if not spec.history:
        return problems
    for field, example in (("entity_key", "customerID"), ("event_time", "created_at")):
        if not getattr(spec, field):
            problems.append(Problem(field, f"history features aggregate each entity's earlier events, but no {field} "
                                           "is set", f"set {field} to the data's column (e.g. {example})"))
    taken = {spec.target: "the target", spec.event_time: "the event time", spec.entity_key: "the entity key",
             **{k: "a lookup key" for k in spec.lookup_keys},
             **{f: "a lookup feature" for lk in spec.lookups.values() for f in lk.features},
             **{f: "a declared feature" for f in spec.features}}
    numeric = ", ".join(n for n, f in spec.features.items() if f.type == "numeric") or "(none declared)"
    for name, h in spec.history.items():
        where = f"history.{name}"
        if name in taken:
            problems.append(Problem(where, f"'{name}' is already {taken[name]}", "give the history feature another name"))
        col = h.column
        if col is None:
            continue
        if col == spec.target:
            problems.append(Problem(f"{where}.column", f"'{col}' is the target: the labels of an entity's recent events "
                                    "are not known yet when a request is served, so the model would train on what "
                                    "serving cannot see", f"aggregate a numeric feature instead: {numeric}"))
        elif col not in spec.features:
            problems.append(Problem(f"{where}.column", f"'{col}' is not a declared feature of the events (lookup "
                                    "features are not aggregated)", f"use one of the numeric features: {numeric}"))
        elif spec.features[col].type != "numeric":
            problems.append(Problem(f"{where}.column", f"'{col}' is a {spec.features[col].type} feature; {h.agg} "
                                    "needs a numeric one", f"use one of: {numeric}, or agg: count"))
    return problems


def _lookup_problems(spec: Spec) -> list[Problem]:
    """Lookups need an event time to join on, keys the main rows carry as text, and their own feature names."""
    problems: list[Problem] = []
    if spec.lookups and not spec.event_time:
        problems.append(Problem("event_time", "lookups are joined as of each row's event time, but no event_time is set",
                                "set event_time to the main data's timestamp column (e.g. time_hour)"))
    owner: dict[str, str] = {}
    taken = {spec.target: "the target", spec.event_time: "the event time", spec.entity_key: "the entity key"}
    for name, lookup in spec.lookups.items():
        where = f"lookups.{name}"
        for key in lookup.keys:
            if key in (spec.target, spec.event_time):
                problems.append(Problem(f"{where}.keys", f"key '{key}' is {taken[key]} of the main data",
                                        "join on columns that identify what a reading is about (e.g. origin)"))
            elif key in spec.features and spec.features[key].type != "categorical":
                problems.append(Problem(f"{where}.keys", f"key '{key}' is a {spec.features[key].type} feature; "
                                        "keys are matched as text", f"declare features.{key} as categorical, "
                                        "or remove it from features (it is then kept as a key column only)"))
            if key in lookup.features or key == lookup.time:
                problems.append(Problem(f"{where}.keys", f"key '{key}' is also the lookup's time or one of its features",
                                        "a key is only matched, never a feature of the same lookup"))
        if lookup.time in lookup.features:
            problems.append(Problem(f"{where}.features.{lookup.time}", "the lookup's time column is listed as a feature",
                                    "declare it only as time"))
        for feat in lookup.features:
            clash = ("a main feature" if feat in spec.features else taken.get(feat) if feat in taken
                     else "a lookup key" if feat in spec.lookup_keys
                     else f"a feature of lookups.{owner[feat]}" if feat in owner else None)
            if clash:
                problems.append(Problem(f"{where}.features.{feat}", f"'{feat}' is already {clash}",
                                        "give the column another name in the lookup's data"))
            owner.setdefault(feat, name)
    return problems


def _location(loc: tuple[Any, ...]) -> str:
    # pydantic puts union member names in the path (costs.BinaryCosts.x); drop them.
    return ".".join(str(p) for p in loc if p not in _UNION_TAGS)


_UNION_TAGS = {"BinaryCosts", "RegressionCosts", "MinMetric", "file", "folder", "sql", "http", "redis_stream",
               *(f"kind={k}" for k in DERIVED_KINDS)}

_FIXES = {
    "extra_forbidden": "remove this key or check its spelling (see `tidal spec schema`)",
    "missing": "add this field",
    "enum": "use one of the allowed values",
    "literal_error": "use one of the allowed values",
    "string_pattern_mismatch": "use only the characters the field's description allows",
}


def parse_spec(data: Any, *, source: str = "spec") -> Spec:
    """Validate a mapping into a :class:`Spec`, reporting every problem at once."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a mapping at the top level, got {type(data).__name__}",
                        fix="start from `tidal init DATA --target COL`")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems, seen = [], set()
        for err in exc.errors():
            loc = _location(err["loc"])
            key = (loc, err["type"])
            if key in seen:
                continue
            seen.add(key)
            msg = err["msg"]
            if err["type"] != "missing" and "input" in err:
                msg += f" (got {err['input']!r})"[:200]
            problems.append(Problem(loc, msg, _FIXES.get(err["type"], "")))
        raise SpecError(f"{source}: {len(problems)} problem(s) in the spec", problems=problems) from None
    problems = _semantic_problems(spec)
    if problems:
        raise SpecError(f"{source}: {len(problems)} problem(s) in the spec", problems=problems)
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate a spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"spec file not found: {path}",
                        fix="run `tidal init DATA --target COL` to draft one, or pass --spec PATH") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(f"{path}: not valid YAML at {where}: {getattr(exc, 'problem', exc)}",
                        fix="fix the YAML syntax at that position") from None
    return parse_spec(data, source=str(path))


def spec_json_schema() -> dict[str, Any]:
    return Spec.model_json_schema()


def dump_spec(spec: Spec) -> str:
    """The spec as YAML, every default filled in."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
