"""Promptune's job workers: the Celery app (celery_app), thin tasks, the job runner and the reaper."""
