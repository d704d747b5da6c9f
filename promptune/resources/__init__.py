"""The client's resources: one module each (datasets, jobs, models, predict)."""
