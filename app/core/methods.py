"""Methods from outside the repository: imported by the API and every worker before they serve.

A research team adds a method without forking: a module that calls ``models.register_method`` at import
is named in the setting ``PROMPTUNE_METHOD_MODULES`` (comma-separated importable modules), or an installed
package declares it in the Python entry point group ``promptune.methods``. A module that cannot be imported,
or a method whose fields collide with the job's own fields, stops start-up with a message that says which.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points

from app.core.job_plan import check_method_fields
from app.core.settings import Settings
from models import get_method, list_methods

ENTRY_POINT_GROUP = "promptune.methods"
log = logging.getLogger("promptune.methods")
_loaded: set[str] = set()


class MethodModuleError(RuntimeError):
    """A method module named by the settings or an entry point cannot be used."""


def configured_modules(settings: Settings) -> list[str]:
    return [name.strip() for name in settings.method_modules.split(",") if name.strip()]


def _import(name: str, source: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - any failure of a plug-in is a start-up error with its name
        raise MethodModuleError(
            f"cannot import method module {name!r} ({source}): {type(exc).__name__}: {exc}"
        ) from exc


def load_method_modules(settings: Settings) -> list[str]:
    """Import the configured method modules and entry points (once per module); returns the methods.

    Raises:
        MethodModuleError: a module failed to import or registered an unusable method.
    """
    for name in configured_modules(settings):
        if name not in _loaded:
            _import(name, "PROMPTUNE_METHOD_MODULES")
            _loaded.add(name)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        if entry.value not in _loaded:
            _import(entry.module, f"entry point {entry.name!r} in group {ENTRY_POINT_GROUP!r}")
            _loaded.add(entry.value)
    for method in list_methods():
        try:
            check_method_fields(get_method(method))
        except Exception as exc:  # noqa: BLE001 - JobConfigError: report it as a start-up error
            raise MethodModuleError(str(exc)) from exc
    log.debug("methods: %s", ", ".join(list_methods()))
    return list_methods()
