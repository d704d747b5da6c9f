"""Tenant-scoped repository functions used by the API, the CLI and the workers' reads.

Every function is keyword-only and every query on tenant-owned rows filters on ``tenant_id``: another
tenant's object is simply "not found" (OWASP API1). Functions flush but do not commit unless they say so;
the caller (a request's session dependency, or ``session_scope``) owns the transaction. One module per
resource; import the package: ``from app.core.db import repo`` then ``repo.get_job(...)``.
"""

from __future__ import annotations

from app.core.db.repo.classifiers import (
    create_classifier_once,
    delete_classifier,
    get_classifier,
    get_classifier_by_idempotency_key,
    list_classifiers,
    text_features_in_use,
)
from app.core.db.repo.common import (
    IdempotencyConflict,
    InvalidTransition,
    PageQuery,
)
from app.core.db.repo.datasets import (
    create_dataset,
    create_dataset_once,
    dataset_in_use,
    delete_dataset,
    get_dataset,
    get_dataset_by_idempotency_key,
    list_datasets,
    same_upload,
)
from app.core.db.repo.jobs import (
    add_job_event,
    cancel_job,
    count_active_jobs,
    count_jobs_by_status,
    create_job,
    get_job,
    get_job_by_idempotency_key,
    list_job_events,
    list_jobs,
    request_values,
    same_request,
)
from app.core.db.repo.tenants import (
    LAST_USED_RESOLUTION,
    authenticate,
    create_api_key,
    create_tenant,
    get_or_create_tenant,
    get_tenant_by_name,
    list_api_keys,
    list_tenants,
    revoke_api_key,
)
from app.core.db.repo.tuned_models import (
    create_model,
    delete_model,
    get_model,
    list_models,
    model_in_use,
)

__all__ = [
    "IdempotencyConflict",
    "InvalidTransition",
    "PageQuery",
    "LAST_USED_RESOLUTION",
    "add_job_event",
    "authenticate",
    "cancel_job",
    "count_active_jobs",
    "count_jobs_by_status",
    "create_api_key",
    "create_classifier_once",
    "create_dataset",
    "create_dataset_once",
    "create_job",
    "create_model",
    "create_tenant",
    "dataset_in_use",
    "delete_classifier",
    "delete_dataset",
    "delete_model",
    "get_classifier",
    "get_classifier_by_idempotency_key",
    "get_dataset",
    "get_dataset_by_idempotency_key",
    "get_job",
    "get_job_by_idempotency_key",
    "get_model",
    "get_or_create_tenant",
    "get_tenant_by_name",
    "list_api_keys",
    "list_tenants",
    "list_classifiers",
    "list_datasets",
    "list_job_events",
    "list_jobs",
    "list_models",
    "model_in_use",
    "request_values",
    "revoke_api_key",
    "same_request",
    "same_upload",
    "text_features_in_use",
]
