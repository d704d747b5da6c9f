"""The ONE place where an API job config becomes the models library's configs.

The API's ``config`` object is flat (the REST contract): common training fields, data fields, and the
method's own fields. Unknown fields are refused by name. The values are then validated by ``models``
(``ConfigError`` names the offending field; it is reported as ``config.<field>``). The worker calls
:func:`build_plan` again on the stored config, so API and worker can never disagree on its meaning.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from models.backbones.spec import BackboneSpec
from models.errors import ConfigError

METHOD_FAMILY = {"spt": "timm", "rpp": "open_clip"}
# TrainConfig fields a client may set (seed comes from the job; checkpointing and workers are the server's).
TRAIN_FIELDS = frozenset(
    {
        "epochs",
        "batch_size",
        "lr",
        "optimizer",
        "momentum",
        "weight_decay",
        "head_weight_decay",
        "warmup_epochs",
        "min_lr",
        "grad_clip",
        "eval_batch_size",
    }
)
# How the dataset is used: a validation carve-out when the dataset has no val split, and k-shot sampling.
DATA_FIELDS = frozenset({"val_fraction", "shots"})
METHOD_FIELDS = {
    "spt": frozenset({"mode", "num_prompts", "init"}),
    "rpp": frozenset(
        {
            "design",
            "n_ctx",
            "depth",
            "num_sampled_classes",
            "kd_weight",
            "kd_temperature",
            "teacher",
            "init_from",
        }
    ),
}
DEFAULT_VAL_FRACTION = 0.1


class JobConfigError(Exception):
    def __init__(self, code: str, message: str, param: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.param = param


@dataclass(frozen=True)
class JobPlan:
    method: str
    backbone: BackboneSpec
    method_config: Any  # the method's MethodConfig
    train_config: Any  # models.TrainConfig
    val_fraction: float
    shots: int | None
    init_from: str | None  # RPP: id of the tuned model whose prompts initialise this one


def _invalid(field: str, message: str) -> JobConfigError:
    return JobConfigError("invalid_config", f"config.{field}: {message}", f"config.{field}")


def resolve_backbone(method: str, name: str, specs: Mapping[str, BackboneSpec]) -> BackboneSpec:
    """The registry spec for ``name``; unknown_backbone / invalid_backbone when it does not fit ``method``."""
    spec = specs.get(name)
    if spec is None:
        known = ", ".join(sorted(specs)) or "none registered"
        raise JobConfigError("unknown_backbone", f"unknown backbone {name!r} (known: {known})", "backbone")
    family = METHOD_FAMILY[method]
    if spec.family != family:
        raise JobConfigError(
            "invalid_backbone",
            f"method {method!r} needs a {family} backbone; {name!r} is {spec.family}",
            "backbone",
        )
    return spec


def _data_fields(config: Mapping[str, Any]) -> tuple[float, int | None]:
    val_fraction = config.get("val_fraction", DEFAULT_VAL_FRACTION)
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, int | float)
        or not 0 <= val_fraction < 1
    ):
        raise _invalid("val_fraction", "must be a number in [0, 1)")
    shots = config.get("shots")
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, int) or shots < 1):
        raise _invalid("shots", "must be a positive integer or null")
    return float(val_fraction), shots


# RPPConfig field -> the API field it comes from (to name the API field in errors).
_RPP_API_FIELD = {
    "text_design": "design",
    "vision_design": "design",
    "text_length": "n_ctx",
    "vision_length": "n_ctx",
    "text_depth": "depth",
    "vision_depth": "depth",
}


def _rpp_values(values: dict[str, Any], specs: Mapping[str, BackboneSpec]) -> dict[str, Any]:
    """API RPP fields -> RPPConfig fields.

    ``design`` qkv|shared prompts both towers with that design; coop is POMP's shallow text context alone.
    ``n_ctx`` and ``depth`` apply to every prompted tower; ``teacher`` names a registered open_clip backbone.
    """
    out: dict[str, Any] = {}
    design = values.get("design", "qkv")
    if design not in ("qkv", "shared", "coop"):
        raise _invalid("design", f"must be one of 'qkv', 'shared', 'coop', got {design!r}")
    out["text_design"] = design
    out["vision_design"] = "none" if design == "coop" else design
    if "n_ctx" in values:
        out["text_length"] = values["n_ctx"]
        if design != "coop":
            out["vision_length"] = values["n_ctx"]
    if "depth" in values:
        out["text_depth"] = values["depth"]
        if design != "coop":
            out["vision_depth"] = values["depth"]
    for name in ("num_sampled_classes", "kd_weight", "kd_temperature"):
        if name in values:
            out[name] = values[name]
    teacher = values.get("teacher")
    if teacher is not None:
        if not isinstance(teacher, str):
            raise _invalid("teacher", "must be the name of a registered open_clip backbone")
        spec = specs.get(teacher)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none registered"
            raise JobConfigError(
                "unknown_backbone", f"unknown teacher backbone {teacher!r} (known: {known})", "config.teacher"
            )
        if spec.family != "open_clip":
            raise _invalid("teacher", f"{teacher!r} is not an open_clip backbone")
        out["teacher"] = spec.to_dict()
    return out


def _api_field(method: str, field: str) -> str:
    if method == "rpp":
        root = field.split(".", 1)[0]
        if root == "teacher":
            return "teacher"
        return _RPP_API_FIELD.get(root, field)
    return field


def build_plan(
    *,
    method: str,
    backbone: str,
    config: Mapping[str, Any],
    seed: int,
    specs: Mapping[str, BackboneSpec],
    max_epochs: int,
    checkpoint_every_steps: int,
    model_exists: Callable[[str], bool] | None = None,
) -> JobPlan:
    """Validate a job request into a :class:`JobPlan`, or raise :class:`JobConfigError`.

    Args:
        model_exists: checks an RPP ``init_from`` model id (tenant-scoped by the caller); None skips it.
    """
    from models import TrainConfig, method_config

    if method not in METHOD_FIELDS:
        raise JobConfigError("invalid_request", f"unknown method {method!r}", "method")
    spec = resolve_backbone(method, backbone, specs)
    if not isinstance(config, Mapping):
        raise JobConfigError("invalid_config", "config must be an object", "config")
    allowed = TRAIN_FIELDS | DATA_FIELDS | METHOD_FIELDS[method]
    unknown = sorted(set(config) - allowed)
    if unknown:
        raise _invalid(
            unknown[0], f"unknown field for method {method!r} (allowed: {', '.join(sorted(allowed))})"
        )
    val_fraction, shots = _data_fields(config)
    train_values = {k: v for k, v in config.items() if k in TRAIN_FIELDS}
    method_values = {k: v for k, v in config.items() if k in METHOD_FIELDS[method]}
    epochs = train_values.get("epochs")
    if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs > max_epochs:
        raise _invalid("epochs", f"must be <= {max_epochs} on this server")
    init_from = method_values.pop("init_from", None)
    if init_from is not None:
        if not isinstance(init_from, str) or (model_exists is not None and not model_exists(init_from)):
            raise JobConfigError(
                "not_found", f"config.init_from: model {init_from!r} not found", "config.init_from"
            )
    try:
        train_config = TrainConfig.from_dict(
            {**train_values, "seed": seed, "checkpoint_every_steps": checkpoint_every_steps}
        )
    except ConfigError as exc:
        raise _invalid(exc.field, str(exc).split(": ", 1)[-1]) from None
    values = _rpp_values(method_values, specs) if method == "rpp" else method_values
    try:
        mcfg = method_config(method, values)
    except ConfigError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise _invalid(_api_field(method, exc.field), message) from None
    return JobPlan(method, spec, mcfg, train_config, val_fraction, shots, init_from)
