"""YAML configuration files of the services (alerting rules, retraining policies):
parsed and validated by a pydantic model, every error reported with its place.

Example::

    >>> load_yaml_config({"policies": []}, RetrainingConfig, "retraining configuration")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is invalid; the message names where and why."""


def load_yaml_config(source: str | Path | dict[str, Any], model: type[M], what: str) -> M:
    where = "<mapping>" if isinstance(source, dict) else str(source)
    if isinstance(source, dict):
        data: Any = source
    else:
        try:
            data = yaml.safe_load(Path(source).read_text())
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{where}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping ({what})")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"  {'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in exc.errors()]
        raise ConfigError(f"{where}: invalid {what}:\n" + "\n".join(lines)) from exc
