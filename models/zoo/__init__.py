"""Promptune's own pretrained zoo: a procedural image world, tasks on it, and pretraining recipes.

No weights or datasets can be downloaded here, so the library makes its own: :mod:`.world` renders
seeded scenes of shapes with captions, :mod:`.tasks` builds a mini VTAB-1k and an RPP suite from them
(plus scikit-learn's digits), :mod:`.pretrain_clip` / :mod:`.pretrain_vit` pretrain a tiny open_clip CLIP
and tiny timm ViTs (supervised, MAE), and :mod:`.build` caches the results as named backbones with a
registry JSON. Submodules import torch / open_clip / timm lazily where they can; import what you need::

    from models.zoo.world import sample_scenes, render_scenes, make_captions
    from models.zoo.tasks import build_task, vtab_tasks, rpp_suite, write_imagefolder_zip
    from models.zoo.build import build_zoo
"""

from __future__ import annotations

__all__ = ["build", "pretrain_clip", "pretrain_vit", "tasks", "training", "world"]
