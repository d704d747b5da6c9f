"""The serving engine: predictions from many requests, tenants and tuned models batched into shared forwards.

``lane.py`` runs one backbone's queue (dynamic batching with an adaptive wait); ``engine.py`` admits
requests (a bounded queue, a per-tenant share, a deadline each) and routes them to lanes; the batched math
itself lives in ``models`` (``models.batched_logits``), so a notebook can use it without the service.
"""
