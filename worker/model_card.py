"""A tuned model's card: a README.md in the style of Hugging Face's PEFT / AutoTrain model cards.

YAML front matter (library, tags, base model, dataset, a model-index with the headline metrics), then
what the model is, what it is for and not for, the data, the training recipe and history, and the
per-class evaluation. Every number comes from the report (worker/model_report.py); the card only
formats it. Strings that land in YAML are written as JSON strings (valid YAML scalars), and strings
that land in tables have their pipes escaped, so a class or dataset name cannot break the layout.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

from app.core.storage import MODEL_PLOT_FILES

MAX_LISTED_CLASSES = 20  # class names spelled out in the intended-use paragraph


@dataclasses.dataclass(frozen=True)
class CardFacts:
    """What the card says beyond the report: the job, the backbone, the dataset and the recipe."""

    model_id: str
    job_id: str
    method: str
    method_description: str
    backbone_name: str
    backbone: Mapping[str, Any]  # the BackboneSpec as a dict (family, arch, weights, kind, sha256 ...)
    dataset_id: str | None
    dataset_name: str | None
    split_sizes: Mapping[str, int]  # images per split: train, val, test
    train_config: Mapping[str, Any]
    method_config: Mapping[str, Any]
    checkpoint_sha256: str
    best_epoch: int | None
    versions: Mapping[str, str]  # framework -> version


def _yaml(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _text(value: Any) -> str:
    """A value as one line of markdown text; HTML characters escaped, as viewers render inline HTML."""
    text = value if isinstance(value, str) else json.dumps(value)
    return " ".join(text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").split())


def _cell(value: Any) -> str:
    """A value as a table cell: :func:`_text` with pipes escaped (a pipe would end the cell)."""
    return _text(value).replace("\\", "\\\\").replace("|", "\\|")


def _fmt(value: float | None, digits: int = 4) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _sentence(text: str) -> str:
    text = text.strip().rstrip(".")
    return f"{text[:1].upper()}{text[1:]}." if text else ""


def weights_source(weights: str) -> str:
    """How the card names a weights source: tags and hub ids as they are, server paths by file name only."""
    path = weights.removeprefix("local-dir:")
    if path != weights or path.startswith(("/", ".")) or "\\" in path:
        return f"local file `{PurePosixPath(path.replace(chr(92), '/')).name}`"
    return f"`{weights}`"


def _front_matter(facts: CardFacts, report: Mapping[str, Any]) -> str:
    dataset = facts.dataset_id or "unknown"
    lines = [
        "---",
        "library_name: promptune",
        "pipeline_tag: image-classification",
        "tags:",
        "- promptune",
        "- prompt-tuning",
        f"- {_yaml(facts.method)}",
        f"base_model: {_yaml(facts.backbone_name)}",
        "datasets:",
        f"- {_yaml(dataset)}",
        "metrics:",
        "- accuracy",
        "- f1",
        "model-index:",
        f"- name: {_yaml(facts.model_id)}",
        "  results:",
        "  - task:",
        "      type: image-classification",
        "      name: Image Classification",
        "    dataset:",
        f"      name: {_yaml(facts.dataset_name or dataset)}",
        f"      type: {_yaml(dataset)}",
        f"      split: {report['split']}",
        "    metrics:",
        f"    - {{type: accuracy, value: {report['accuracy']}, name: Accuracy}}",
        f"    - {{type: f1, value: {report['macro_f1']}, name: Macro F1}}",
        "---",
    ]
    return "\n".join(lines)


def _summary(facts: CardFacts, report: Mapping[str, Any]) -> str:
    dataset = f"**{_text(facts.dataset_name or 'unnamed')}** (`{facts.dataset_id}`)"
    return "\n".join(
        [
            f"# Model `{facts.model_id}`",
            "",
            f"An image classifier prompt-tuned with `{facts.method}` on the frozen backbone "
            f"`{facts.backbone_name}`, trained on the dataset {dataset} by job `{facts.job_id}`.",
            f"It achieves the following results on the {report['split']} split "
            f"({report['num_samples']} images):",
            "",
            f"- Accuracy: {_fmt(report['accuracy'])}",
            f"- Macro F1: {_fmt(report['macro_f1'])}",
            f"- Weighted F1: {_fmt(report['weighted_f1'])}",
            f"- Macro precision: {_fmt(report['macro_precision'])}",
            f"- Macro recall: {_fmt(report['macro_recall'])}",
        ]
    )


def _description(facts: CardFacts) -> str:
    spec = facts.backbone
    sha = f"`{spec['sha256']}`" if spec.get("sha256") else "not recorded by the server's registry"
    rows = [
        ("name", f"`{facts.backbone_name}`"),
        ("family", f"`{spec.get('family')}`"),
        ("architecture", f"`{spec.get('arch')}`"),
        ("weights", weights_source(str(spec.get("weights", "")))),
        ("kind (pretraining)", f"`{spec.get('kind')}`"),
        ("weights sha256", sha),
    ]
    return "\n".join(
        [
            "## Model description",
            "",
            _sentence(facts.method_description),
            "Only the prompts (and the head, where the method has one) were trained: every backbone weight is "
            "frozen and unchanged, so the checkpoint holds the learned tensors alone and needs this backbone:",
            "",
            "| Backbone | |",
            "|---|---|",
            *[f"| {name} | {_cell(value)} |" for name, value in rows],
            "",
            f"Checkpoint: `model.safetensors`, sha256 `{facts.checkpoint_sha256}` (safetensors; its header "
            "holds the method, both configs, the backbone spec, the class names and the preprocessing).",
        ]
    )


def _intended_use(facts: CardFacts, report: Mapping[str, Any]) -> str:
    classes = list(report["classes"])
    listed = ", ".join(f"“{_text(c)}”" for c in classes[:MAX_LISTED_CLASSES])
    more = f" and {len(classes) - MAX_LISTED_CLASSES} more" if len(classes) > MAX_LISTED_CLASSES else ""
    train = facts.split_sizes.get("train", 0)
    lines = [
        "## Intended uses & limitations",
        "",
        f"Intended use: sorting images like those of the training data into its {len(classes)} classes "
        f"({listed}{more}), through `POST /v1/models/{facts.model_id}/predict` or the checkpoint with the "
        "Promptune models library. It always answers one of these classes: it has no 'none of them'.",
        "",
        "Limitations:",
        "",
        f"- **Small data.** It learned from {train} training images (about "
        f"{train / max(1, len(classes)):.1f} per class) and was measured on {report['num_samples']} held-out "
        "images: a per-class number resting on a handful of images can move a lot with a few more.",
        "- **Frozen backbone.** The prompts steer the backbone's features but cannot create distinctions the "
        "backbone never learned; classes its features do not separate stay confused.",
        "- **Distribution shift.** Expect lower accuracy on images from another source, camera, resolution, "
        "style or class balance than the training data, and on classes that look alike.",
    ]
    if report["split"] == "val":
        lines.append(
            "- **Optimistic numbers.** The dataset had no test split, so the metrics come from the validation "
            "split, which also chose the kept epoch."
        )
    return "\n".join(lines)


def _data(facts: CardFacts) -> str:
    sizes = facts.split_sizes
    return "\n".join(
        [
            "## Training and evaluation data",
            "",
            f"Dataset: {_text(facts.dataset_name or 'unnamed')} (`{facts.dataset_id}`).",
            "",
            "| Split | Images |",
            "|---|---|",
            *[f"| {name} | {sizes.get(name, 0)} |" for name in ("train", "val", "test")],
        ]
    )


def _kept_why(report: Mapping[str, Any]) -> str:
    validated = any(h.get("val_acc") is not None for h in report["history"])
    return "best validation accuracy" if validated else "the last epoch: no validation split"


def _training(facts: CardFacts, report: Mapping[str, Any]) -> str:
    lines = [
        "## Training procedure",
        "",
        "### Training hyperparameters",
        "",
        "| Setting | Value |",
        "|---|---|",
        *[f"| {_cell(k)} | {_cell(v)} |" for k, v in sorted(facts.train_config.items())],
        *[f"| method.{_cell(k)} | {_cell(v)} |" for k, v in sorted(facts.method_config.items())],
        "",
        "### Training results",
        "",
        f"Kept epoch: {facts.best_epoch if facts.best_epoch is not None else '–'} ({_kept_why(report)}).",
        "",
        "| Epoch | Train loss | Train acc | Val loss | Val acc | Learning rate |",
        "|---|---|---|---|---|---|",
    ]
    for h in report["history"]:
        lines.append(
            f"| {h['epoch']} | {_fmt(h['train_loss'])} | {_fmt(h['train_acc'])} | {_fmt(h['val_loss'])} "
            f"| {_fmt(h['val_acc'])} | {_fmt(h['lr'], 6)} |"
        )
    lines += ["", f"![Training curves]({MODEL_PLOT_FILES['training_curves']})"]
    search = report.get("lr_search")
    if search:
        lines += [
            "",
            "### Learning-rate search",
            "",
            f"Chosen learning rate: {search['chosen']}.",
            "",
            "| Learning rate | Val acc | Val loss |",
            "|---|---|---|",
        ]
        lines += [
            f"| {t['lr']} | {_fmt(t.get('val_acc'))} | {_fmt(t.get('val_loss'))} |" for t in search["trials"]
        ]
    return "\n".join(lines)


def _evaluation(report: Mapping[str, Any]) -> str:
    lines = [
        "## Evaluation",
        "",
        f"On the {report['split']} split ({report['num_samples']} images); definitions in Promptune's "
        "docs/reports.md (scikit-learn's, with 0 for an empty denominator).",
        "",
        "| Class | Precision | Recall | F1 | Support |",
        "|---|---|---|---|---|",
    ]
    for name, row in report["per_class"].items():
        lines.append(
            f"| {_cell(name)} | {_fmt(row['precision'])} | {_fmt(row['recall'])} | {_fmt(row['f1'])} "
            f"| {row['support']} |"
        )
    lines += ["", f"![Confusion matrix]({MODEL_PLOT_FILES['confusion_matrix']})"]
    return "\n".join(lines)


def render_model_card(facts: CardFacts, report: Mapping[str, Any]) -> str:
    """The model card (markdown) of a model from its facts and its evaluation report."""
    versions = [f"- {name} {version}" for name, version in sorted(facts.versions.items())]
    sections = [
        _front_matter(facts, report),
        _summary(facts, report),
        _description(facts),
        _intended_use(facts, report),
        _data(facts),
        _training(facts, report),
        _evaluation(report),
        "\n".join(["## Framework versions", "", *versions]),
    ]
    return "\n\n".join(sections) + "\n"
