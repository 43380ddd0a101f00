"""Plug-ins named on the command line as `module:function` (labelers, fidelity scorers): import and check them.

Knows importlib only; what a plug-in must compute is its caller's business.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def load_callable(spec: str, what: str, error: type[Exception], default_module: str | None = None) -> Callable:
    """The callable `spec` names (`package.module:function`; a bare `function` is looked up in `default_module`
    when one is given). Anything else raises `error` with a message that names `what` and the spec."""
    module_name, sep, attr = spec.rpartition(":") if isinstance(spec, str) else ("", "", "")
    module_name = module_name or (default_module or "")
    if not module_name or not attr or (not sep and default_module is None):
        raise error(f"{what} is named module:function, got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise error(f"cannot load {what} {spec!r}: {e}") from e
    if not callable(fn):
        raise error(f"{what} {spec!r} is not callable")
    return fn
