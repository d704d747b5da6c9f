"""The ONE place where a job request becomes the models library's configs.

A job's ``config`` object is flat (the REST contract): the training recipe (``models.TrainConfig``'s
fields but ``seed``, which the job carries, and the runtime fields the server decides), how the dataset is
used (``val_fraction``, ``shots``), how many data-parallel ranks train it (``world_size``), the method's
own config fields and shorthands, and ``init_from`` for methods that can start from another model.
Which fields a method has, their limits and the method's capabilities all come from its registration in ``models`` (the registry); nothing here names a method.
The API validates a request with :func:`build_plan`; the worker calls it again on the stored config, so
the two can never disagree on its meaning.

A recipe field the request leaves out takes the method's default for the backbone's kind (the method's
``train_defaults`` registration), else ``TrainConfig``'s. ``lr`` may be ``"auto"``: the plan then carries a
small grid around the method's default and a per-trial epoch budget, which the worker searches on the
validation split before the real training (worker/lr_auto.py; docs/methods.md "Defaults and lr: auto").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from app.core.job_fields import (
    JOB_FIELDS,
    JobConfigError,
    data_fields,
    invalid_field,
    world_size_field,
)
from models import BackboneSpec, ConfigError, MethodEntry, TrainConfig, config_schema, get_method

JOB_SET_TRAIN_FIELDS = frozenset({"seed"})  # a job-level field, not part of config
INIT_FROM = "init_from"
BACKBONE_FAMILY = "backbone_family"  # field metadata: the value names a registered backbone

LR_AUTO = "auto"
# The "auto" grid: the method's default lr times these factors (a half-decade either side), so a search
# costs at most three short trials whatever the request.
LR_AUTO_FACTORS = (1 / 3, 1.0, 3.0)
# Each trial trains this share of the job's epochs (at least 1, at most LR_TRIAL_MAX_EPOCHS) on its own
# compressed schedule: the search costs about 0.6 of a job's training (more under 5 epochs, a trial being
# at least 1 epoch), and never more than 15 epochs.
LR_TRIAL_FRACTION = 0.2
LR_TRIAL_MAX_EPOCHS = 5
X_DEFAULTS_BY_KIND = "x-defaults-by-backbone-kind"


@dataclasses.dataclass(frozen=True)
class JobPlan:
    method: str
    backbone: BackboneSpec
    method_config: Any  # the method's MethodConfig
    train_config: TrainConfig
    val_fraction: float
    shots: int | None
    init_from: str | None  # the id of the model whose learned tensors start this one
    # lr "auto": the rates to try (train_config.lr is the method's default until the search replaces it)
    # and each trial's epochs; both None when the request named its lr.
    lr_grid: tuple[float, ...] | None = None
    lr_trial_epochs: int | None = None
    world_size: int = 1  # data-parallel ranks (routing: app.core.queue.job_queue)


def train_fields() -> frozenset[str]:
    """The TrainConfig fields a job may set (the recipe; not seed nor the runtime fields)."""
    return frozenset(config_schema(TrainConfig)["properties"]) - JOB_SET_TRAIN_FIELDS


def _backbone_refs(entry: MethodEntry) -> dict[str, str]:
    """Method config fields whose value is a backbone: field -> the backbone family it must have."""
    return {
        f.name: f.metadata[BACKBONE_FAMILY]
        for f in dataclasses.fields(entry.config_cls)
        if BACKBONE_FAMILY in f.metadata
    }


def method_fields(entry: MethodEntry) -> frozenset[str]:
    """The method's own request fields: its config's non-runtime fields, its shorthands, init_from."""
    fields = set(entry.config_schema()["properties"])
    if entry.can("init_from"):
        fields.add(INIT_FROM)
    return frozenset(fields)


def check_method_fields(entry: MethodEntry) -> None:
    """A method whose field names collide with the recipe or data fields cannot be served (start-up check)."""
    shared = sorted(method_fields(entry) & (train_fields() | set(JOB_FIELDS)))
    if shared:
        raise JobConfigError(
            "invalid_method",
            f"method {entry.name!r}: config fields {shared} collide with the job's training/data fields",
            "method",
        )


def _recipe_schema(entry: MethodEntry) -> dict[str, Any]:
    """TrainConfig's job fields with the method's defaults: ``default`` is the method's every-kind value
    (else TrainConfig's); a field whose default differs by kind lists them under x-defaults-by-backbone-kind."""
    recipe = config_schema(TrainConfig)["properties"]
    properties = {k: v for k, v in recipe.items() if k not in JOB_SET_TRAIN_FIELDS}
    every_kind = entry.train_defaults_for(entry.ANY_KIND)
    kinds = [kind for kind in entry.train_defaults if kind != entry.ANY_KIND]
    for name, schema in properties.items():
        if name in every_kind:
            schema["default"] = every_kind[name]
        default = schema.get("default")
        by_kind = {kind: entry.train_defaults_for(kind).get(name, default) for kind in kinds}
        if any(value != default for value in by_kind.values()):
            schema[X_DEFAULTS_BY_KIND] = {entry.ANY_KIND: default, **by_kind}
            schema["description"] = (
                f"{schema.get('description', '')} The default depends on the backbone's kind "
                f"({X_DEFAULTS_BY_KIND})."
            ).strip()
    lr = properties["lr"]
    bounds = {k: lr.pop(k) for k in ("type", "exclusiveMinimum", "minimum", "maximum") if k in lr}
    lr["anyOf"] = [bounds, {"const": LR_AUTO}]
    factors = ", ".join(f"{factor:.2g}" for factor in LR_AUTO_FACTORS)
    lr["description"] += (
        f' Or "{LR_AUTO}": before training, the worker trains one short trial per rate (the default times '
        f"{factors}) and keeps the rate with the best validation accuracy (the job needs validation data)."
    )
    if any("warmup_epochs" in layer for layer in entry.train_defaults.values()):
        properties["warmup_epochs"]["description"] += (
            " The method's default is cut to half the epochs at most."
        )
    return properties


def job_config_schema(entry: MethodEntry) -> dict[str, Any]:
    """The JSON Schema of a job's ``config`` for this method (what the API accepts)."""
    properties = _recipe_schema(entry)
    properties.update(JOB_FIELDS)
    properties.update(entry.config_schema()["properties"])
    for name, family in _backbone_refs(entry).items():
        properties[name] = {
            "type": ["string", "null"],
            "default": None,
            "description": f"the name of a registered {family} backbone (GET /v1/backbones)",
        }
    if entry.can("init_from"):
        properties[INIT_FROM] = {
            "type": ["string", "null"],
            "default": None,
            "description": f"the id of a {entry.name} model of yours whose learned tensors start this job",
        }
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if entry.train_defaults:  # every kind's whole set of method defaults, for a client choosing a backbone
        schema[X_DEFAULTS_BY_KIND] = {kind: entry.train_defaults_for(kind) for kind in entry.train_defaults}
    return schema


def resolve_backbone(
    name: str, specs: Mapping[str, BackboneSpec], *, family: str, user: str = "this"
) -> BackboneSpec:
    """The registry spec for ``name``; unknown_backbone / invalid_backbone when it is not a ``family`` one.

    Args:
        user: who needs the backbone, for the message (e.g. ``method 'rpp'``).
    """
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none registered"
        raise JobConfigError("unknown_backbone", f"unknown backbone {name!r} (known: {known})", "backbone")
    if spec.family != family:
        raise JobConfigError(
            "invalid_backbone", f"{user} needs a {family} backbone; {name!r} is {spec.family}", "backbone"
        )
    return spec


def _resolve_backbone_refs(
    entry: MethodEntry, values: dict[str, Any], specs: Mapping[str, BackboneSpec]
) -> dict[str, Any]:
    """Backbone fields (RPP's ``teacher``) arrive as registered names; the method config takes specs.

    security: only names of the server's registry are accepted, never a spec a client wrote (it could
    point the worker at any file on the server).
    """
    for field, family in _backbone_refs(entry).items():
        name = values.get(field)
        if name is None:
            continue
        if not isinstance(name, str):
            raise invalid_field(field, f"must be the name of a registered {family} backbone")
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none registered"
            raise JobConfigError(
                "unknown_backbone", f"unknown {field} backbone {name!r} (known: {known})", f"config.{field}"
            )
        if spec.family != family:
            raise invalid_field(field, f"{name!r} is not an {family} backbone")
        values[field] = spec.to_dict()
    return values


def _split(entry: MethodEntry, config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``config`` -> (recipe values, method values); an unknown field is refused by name."""
    recipe, own = train_fields(), method_fields(entry)
    allowed = recipe | set(JOB_FIELDS) | own
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise invalid_field(
            unknown[0], f"unknown field for method {entry.name!r} (allowed: {', '.join(sorted(allowed))})"
        )
    return (
        {k: v for k, v in config.items() if k in recipe},
        {k: v for k, v in config.items() if k in own},
    )


def _check_init_from(
    entry: MethodEntry, init_from: Any, model_exists: Callable[[str, str], bool] | None
) -> str | None:
    if init_from is None:
        return None
    if not isinstance(init_from, str) or (
        model_exists is not None and not model_exists(init_from, entry.name)
    ):
        raise JobConfigError(
            "not_found", f"config.init_from: model {init_from!r} not found", "config.init_from"
        )
    return init_from


def _with_defaults(values: dict[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The request's recipe over the method's defaults. A default warm-up is cut to half the job's epochs
    (a 1-epoch warm-up would refuse a 1-epoch job); a warm-up the request names is checked as written."""
    merged = {**defaults, **values}
    if "warmup_epochs" in defaults and "warmup_epochs" not in values:
        epochs = merged.get("epochs", TrainConfig().epochs)
        if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1:
            merged["warmup_epochs"] = min(float(defaults["warmup_epochs"]), epochs / 2)
    return merged


def lr_auto_grid(center: float) -> tuple[float, ...]:
    """The rates lr "auto" tries: ``center`` times LR_AUTO_FACTORS, at two significant digits."""
    return tuple(sorted({float(f"{center * factor:.2g}") for factor in LR_AUTO_FACTORS}))


def trial_epochs_for(epochs: int) -> int:
    """Each lr-search trial's epochs: LR_TRIAL_FRACTION of the job's, within [1, LR_TRIAL_MAX_EPOCHS]."""
    return max(1, min(LR_TRIAL_MAX_EPOCHS, round(epochs * LR_TRIAL_FRACTION), epochs))


def lr_trial_config(train_config: TrainConfig, lr: float, trial_epochs: int) -> TrainConfig:
    """One lr-search trial's recipe: the job's at ``lr``, its schedule compressed to ``trial_epochs``
    (warm-up scaled alike), no resume state."""
    scale = trial_epochs / train_config.epochs
    return dataclasses.replace(
        train_config,
        lr=lr,
        epochs=trial_epochs,
        warmup_epochs=train_config.warmup_epochs * scale,
        max_steps=None,
        checkpoint_every_steps=0,
    )


def _lr_search(train_config: TrainConfig) -> tuple[tuple[float, ...], int]:
    """lr "auto": the grid around the (default) lr and the trial budget, every trial's recipe checked."""
    grid, trial_epochs = lr_auto_grid(train_config.lr), trial_epochs_for(train_config.epochs)
    for lr in grid:
        try:
            dataclasses.replace(train_config, lr=lr)
            lr_trial_config(train_config, lr, trial_epochs)
        except ConfigError as exc:
            message = exc.message.split(": ", 1)[-1]
            raise invalid_field(exc.field, f'{message} (lr "auto" tries {list(grid)})') from None
    return grid, trial_epochs


def _train_config(
    values: dict[str, Any],
    defaults: Mapping[str, Any],
    *,
    seed: int,
    max_epochs: int,
    checkpoint_every_steps: int,
) -> tuple[TrainConfig, tuple[float, ...] | None, int | None]:
    """``(train_config, lr_grid, lr_trial_epochs)``; the last two are None unless lr is "auto"."""
    lr = values.get("lr")
    auto = isinstance(lr, str) and lr == LR_AUTO
    if isinstance(lr, str) and not auto:
        raise invalid_field("lr", f'must be a number or "{LR_AUTO}"')
    merged = _with_defaults({k: v for k, v in values.items() if not (auto and k == "lr")}, defaults)
    epochs = merged.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > max_epochs:
        raise invalid_field("epochs", f"must be <= {max_epochs} on this server")
    try:
        train_config = TrainConfig.from_dict(
            {**merged, "seed": seed, "checkpoint_every_steps": checkpoint_every_steps}
        )
    except ConfigError as exc:
        raise invalid_field(exc.field, exc.message.split(": ", 1)[-1]) from None
    if not auto:
        return train_config, None, None
    return train_config, *_lr_search(train_config)


def _method_config(entry: MethodEntry, values: dict[str, Any], specs: Mapping[str, BackboneSpec]) -> Any:
    values = _resolve_backbone_refs(entry, values, specs)
    try:
        return entry.config_cls.from_request(values)
    except ConfigError as exc:
        root = exc.field.split(".", 1)[0]
        field = root if root in _backbone_refs(entry) else exc.field
        raise invalid_field(field, exc.message.split(": ", 1)[-1]) from None


def build_plan(
    *,
    method: str,
    backbone: str,
    config: Mapping[str, Any],
    seed: int,
    specs: Mapping[str, BackboneSpec],
    max_epochs: int,
    checkpoint_every_steps: int,
    model_exists: Callable[[str, str], bool] | None = None,
) -> JobPlan:
    """Validate a job request into a :class:`JobPlan`, or raise :class:`JobConfigError`.

    Args:
        model_exists: ``(model_id, method) -> bool``, checks ``init_from`` (tenant-scoped by the caller);
            None skips the check.
    """
    try:
        entry = get_method(method)
    except ConfigError as exc:
        raise JobConfigError("invalid_request", exc.message.split(": ", 1)[-1], "method") from None
    spec = resolve_backbone(backbone, specs, family=entry.family, user=f"method {method!r}")
    if not isinstance(config, Mapping):
        raise JobConfigError("invalid_config", "config must be an object", "config")
    train_values, method_values = _split(entry, config)
    val_fraction, shots = data_fields(config)
    init_from = _check_init_from(entry, method_values.pop(INIT_FROM, None), model_exists)
    train_config, lr_grid, trial_epochs = _train_config(
        train_values,
        entry.train_defaults_for(spec.kind),
        seed=seed,
        max_epochs=max_epochs,
        checkpoint_every_steps=checkpoint_every_steps,
    )
    method_config = _method_config(entry, method_values, specs)
    return JobPlan(
        method, spec, method_config, train_config, val_fraction, shots, init_from, lr_grid, trial_epochs,
        world_size=world_size_field(config),
    )  # fmt: skip
