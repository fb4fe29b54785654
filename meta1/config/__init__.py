"""The MeTA1 configuration language: grammar, schema, loader, printer.

``syntax`` reads text into a ``tree``; ``schema`` says what a configuration may contain;
``loader`` applies the schema and collects every error; ``types`` converts values.
"""

from meta1.config.errors import ConfigError, Diagnostic, Position
from meta1.config.loader import (
    Config,
    Node,
    default_config_path,
    default_config_text,
    effective_document,
    effective_options,
    effective_section,
    load_bytes,
    load_default,
    load_file,
    load_section,
    load_text,
)

__all__ = [
    "Config", "ConfigError", "Diagnostic", "Node", "Position", "default_config_path",
    "default_config_text", "effective_document", "effective_options", "effective_section", "load_bytes", "load_default", "load_file",
    "load_section", "load_text",
]
