"""The run configuration: schema.py is the schema; load_config reads it from YAML and overrides and checks it.

The names that the rest of the package uses are handed on here.
"""

from dcl_dist.config.keys import field_docs, schema_keys, type_name
from dcl_dist.config.load import dump_yaml, load_config, to_dict
from dcl_dist.config.preflight import resolve_package_path
from dcl_dist.config.schema import VARIANTS, Config, LoraConfig, PhaseConfig

__all__ = [
    "VARIANTS",
    "Config",
    "LoraConfig",
    "PhaseConfig",
    "dump_yaml",
    "field_docs",
    "load_config",
    "resolve_package_path",
    "schema_keys",
    "to_dict",
    "type_name",
]
