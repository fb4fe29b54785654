"""Loading a configuration: text → syntax tree → validated, typed configuration.

Responsibilities
    Apply the schema (:mod:`meta1.config.schema`) to a parsed file: convert every value to
    its type, fill in defaults (``Inherit`` defaults come from the global section), run
    each section's cross-field rules, then check references across the whole file (maps
    named by ``aliases``/``local_user_map``/sequences must be declared, a sequence may not
    contain itself, ``restart_dependencies`` name services). The result is a tree of
    :class:`Node` objects the daemons read as attributes (``config.qmgr.aq_max_entries``).

    And the way back: :func:`effective_document` turns a loaded configuration into a
    syntax tree with every default written out — ``meta1 config`` prints it, and loading
    that text gives the same configuration again (a tested fixed point).

Strategy
    Never stop at the first mistake. A value that fails to convert is reported and
    replaced by its default, an unknown option or section is reported and skipped, and the
    walk goes on, so one run lists every error of the file (and the syntax errors the
    parser recovered from). Only then is a single :class:`ConfigError` raised.

    Options of a section are processed before its subsections, so an ``Inherit`` default
    sees the enclosing value wherever in the file it was written.
"""

from __future__ import annotations

import copy
import difflib
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from meta1.config import schema, syntax
from meta1.config.errors import ConfigError, Diagnostic, Position
from meta1.config.schema import NOT_SET, Inherit, Naming, SectionSpec
from meta1.config.tree import Document, Entry, Option, Section
from meta1.config.types import Invalid, ListOf, Reference

DEFAULT_CONFIG_NAME = "default.conf"
#: The built-in configuration for root: the queue where the daemons' users can reach it.
DEFAULT_ROOT_CONFIG_NAME = "default-root.conf"


@dataclass
class Node:
    """One section of a loaded configuration.

    ``values`` maps every option key (lower case) to its typed value or ``NOT_SET``;
    ``sections`` maps a subsection key to a :class:`Node`, to ``None`` (absent), or — for
    repeatable sections — to a dict by section name (``None`` for the unnamed one).
    Attribute access is case-insensitive: ``node.IO_timeout`` is ``node.io_timeout``.
    """

    spec: SectionSpec
    name: str | None
    pos: Position
    values: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)
    option_pos: dict[str, Position] = field(default_factory=dict)
    declared: bool = True  # False: an implicit section the file leaves out (all defaults)

    def explicit(self, key: str) -> bool:
        """Whether the file set this option (as opposed to a default)."""
        return key.lower() in self.option_pos

    def __getattr__(self, attr: str) -> Any:
        key = attr.lower()
        values = self.__dict__.get("values", {})
        if key in values:
            return values[key]
        sections = self.__dict__.get("sections", {})
        if key in sections:
            return sections[key]
        raise AttributeError(attr)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Node)
            and self.spec.key == other.spec.key
            and self.name == other.name
            and self.values == other.values
            and self.sections == other.sections
        )


@dataclass
class Config:
    """A loaded configuration: the global section and the file it came from."""

    root: Node
    filename: str

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.__dict__["root"], attr)


class _Loader:
    def __init__(self, filename: str, home: str | None):
        self.filename = filename
        self.home = home
        self.diagnostics: list[Diagnostic] = []

    def error(self, pos: Position, message: str) -> None:
        self.diagnostics.append(Diagnostic(self.filename, pos, message))

    # -- one section -------------------------------------------------------------------

    def build(self, spec: SectionSpec, entries: tuple[Entry, ...], name: str | None,
              pos: Position, parent: Node | None) -> Node:
        node = Node(spec, name, pos)
        where = f"section '{spec.keyword}'" if spec.keyword else "the global section"
        for entry in entries:
            if isinstance(entry, Option):
                self._option(node, entry, where)
        self._defaults(node, parent)
        for entry in entries:
            if isinstance(entry, Section):
                self._section(node, entry, where)
        for sub in spec.sections:
            if sub.key not in node.sections:
                default = self.build(sub, (), None, pos, node) if sub.implicit else None
                if default is not None:
                    default.declared = False
                node.sections[sub.key] = ({} if default is None else {None: default}) if sub.repeat else default
        if spec.finish is not None:
            spec.finish(node, lambda key, msg: self.error(node.option_pos.get(key, pos) if key else pos, msg))
        return node

    def _option(self, node: Node, entry: Option, where: str) -> None:
        spec = node.spec.option(entry.key)
        if spec is None:
            self.error(entry.pos, f"unknown option '{entry.name}' in {where}"
                       + _suggest(entry.key, [o.name for o in node.spec.options]))
            return
        if entry.key in node.option_pos:
            self.error(entry.pos, f"option '{entry.name}' is set twice (first at line {node.option_pos[entry.key].line})")
            return
        node.option_pos[entry.key] = entry.pos
        try:
            value = spec.type.convert(entry.value)
        except Invalid as exc:
            self.error(exc.pos or entry.value.pos, f"{spec.name}: {exc}")
            return
        if spec.key == "queue_directory" and isinstance(value, str) and value.startswith("~/"):
            if self.home is None:
                self.error(entry.value.pos, "queue_directory: '~/' needs a home directory")
            else:
                value = os.path.join(self.home, value[2:])
        node.values[spec.key] = value

    def _defaults(self, node: Node, parent: Node | None) -> None:
        for spec in node.spec.options:
            if spec.key in node.values:
                continue
            if spec.required and spec.key not in node.option_pos:
                self.error(node.pos, f"section '{node.spec.keyword}' needs the option {spec.name}")
            default = spec.default
            if isinstance(default, Inherit):
                assert parent is not None, f"{spec.name} inherits but has no parent"
                default = parent.values[default.option.lower()]
            node.values[spec.key] = copy.deepcopy(default)

    def _section(self, node: Node, entry: Section, where: str) -> None:
        spec = node.spec.section(entry.key)
        if spec is None:
            self.error(entry.pos, f"unknown section '{entry.keyword}' in {where}"
                       + _suggest(entry.key, [s.keyword for s in node.spec.sections]))
            return
        if spec.naming is Naming.NONE and entry.name is not None:
            self.error(entry.pos, f"section '{entry.keyword}' takes no name")
        if spec.naming is Naming.REQUIRED and not entry.name:
            self.error(entry.pos, f"section '{entry.keyword}' needs a name")
            return
        child = self.build(spec, entry.entries, entry.name if spec.naming is not Naming.NONE else None,
                           entry.pos, node)
        if spec.repeat:
            siblings = node.sections.setdefault(spec.key, {})
            if child.name in siblings:
                label = f"'{entry.keyword} {child.name}'" if child.name else f"unnamed '{entry.keyword}'"
                self.error(entry.pos, f"section {label} is declared twice (first at line {siblings[child.name].pos.line})")
            else:
                siblings[child.name] = child
        elif spec.key in node.sections:
            self.error(entry.pos, f"section '{entry.keyword}' appears twice "
                                  f"(first at line {node.sections[spec.key].pos.line})")
        else:
            node.sections[spec.key] = child

    # -- the whole file ----------------------------------------------------------------

    def check_references(self, root: Node) -> None:
        maps: dict[str, Node] = root.sections["smar"].sections["map"]
        for node in _nodes(root):
            for spec in node.spec.options:
                ref_type = spec.type.item if isinstance(spec.type, ListOf) else spec.type
                value = node.values[spec.key]
                if not isinstance(ref_type, Reference) or value is NOT_SET:
                    continue
                names = value if isinstance(spec.type, ListOf) else (value,)
                known = maps if ref_type.kind == "map" else schema.SERVICES
                for ref in names:
                    if ref not in known:
                        listing = ", ".join(sorted(known)) or "none"
                        self.error(node.option_pos.get(spec.key, node.pos),
                                   f"{spec.name}: {ref_type.kind} '{ref}' is not declared ({ref_type.kind}s: {listing})")
        self._sequence_cycles(maps)

    def _sequence_cycles(self, maps: dict[str, Node]) -> None:
        """A sequence may not contain itself, directly or through other sequences."""
        reported: set[str] = set()

        def visit(name: str, trail: list[str]) -> None:
            node = maps.get(name)
            if node is None or node.values["type"] != "sequence" or node.values["maps"] is NOT_SET:
                return
            if name in trail:
                cycle = trail[trail.index(name):] + [name]
                if cycle[0] not in reported:
                    reported.update(cycle)
                    first = maps[cycle[0]]
                    what = (f"sequence map '{name}' contains itself" if len(cycle) == 2
                            else "sequence maps contain each other: " + " -> ".join(cycle))
                    self.error(first.option_pos.get("maps", first.pos), what)
                return
            for member in node.values["maps"]:
                visit(member, trail + [name])

        for name in maps:
            visit(name, [])


def _suggest(key: str, names: list[str]) -> str:
    close = difflib.get_close_matches(key, [n.lower() for n in names], n=1)
    if not close:
        return ""
    return f" (did you mean '{next(n for n in names if n.lower() == close[0])}'?)"


def _nodes(node: Node):
    yield node
    for child in node.sections.values():
        if isinstance(child, dict):
            for sub in child.values():
                yield from _nodes(sub)
        elif child is not None:
            yield from _nodes(child)


# ---------------------------------------------------------------------------------------
# Public entry points


def load_text(text: str, filename: str, home: str | None = None) -> Config:
    """Load a configuration from text; raise :class:`ConfigError` with every mistake."""
    doc, diagnostics = syntax.parse(text, filename)
    loader = _Loader(filename, home)
    loader.diagnostics.extend(diagnostics)
    root = loader.build(schema.ROOT, doc.entries, None, Position(1, 1), None)
    loader.check_references(root)
    if loader.diagnostics:
        raise ConfigError(loader.diagnostics)
    return Config(root, filename)


def load_section(spec: SectionSpec, text: str, filename: str) -> Node:
    """Load ``text`` as the body of one section ``spec`` (configuration text that is not a
    file, such as an access map's ``*_conf:`` value); raise :class:`ConfigError` with every
    mistake, positioned in ``text`` and named ``filename``. The section's options may not
    inherit (there is no enclosing section) and may not name maps (nothing is declared)."""
    doc, diagnostics = syntax.parse(text, filename)
    loader = _Loader(filename, None)
    loader.diagnostics.extend(diagnostics)
    node = loader.build(spec, doc.entries, None, Position(1, 1), None)
    if loader.diagnostics:
        raise ConfigError(loader.diagnostics)
    return node


def load_bytes(data: bytes, filename: str, home: str | None = None) -> Config:
    return load_text(syntax.decode(data, filename), filename, home)


def load_file(path: str, home: str | None = None) -> Config:
    """Load a configuration file. An unreadable file is a ConfigError too."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError([Diagnostic(path, Position(1, 1), f"cannot read: {exc.strerror}")]) from None
    return load_bytes(data, path, home)


def default_config_text(root: bool = False) -> str:
    """The built-in default configuration shipped inside the package (``root``: the one
    for root)."""
    return resources.files("meta1.config").joinpath(_default_name(root)).read_text("utf-8")


def default_config_path(root: bool = False) -> str:
    return str(resources.files("meta1.config").joinpath(_default_name(root)))


def _default_name(root: bool) -> str:
    return DEFAULT_ROOT_CONFIG_NAME if root else DEFAULT_CONFIG_NAME


def load_default(home: str | None = None, root: bool = False) -> Config:
    return load_text(default_config_text(root), default_config_path(root), home)


def effective_document(config: Config) -> Document:
    """The loaded configuration as a syntax tree, every default written out."""
    return Document(_entries(config.root))


def effective_options(node: Node) -> tuple[Option, ...]:
    """The options of one section, every default written out (no subsections)."""
    return tuple(entry for entry in _entries(node) if isinstance(entry, Option))


def effective_section(node: Node) -> Section:
    """One section of a loaded configuration as a syntax tree, defaults written out."""
    return Section(node.spec.keyword, node.name, _entries(node))


def _entries(node: Node) -> tuple[Entry, ...]:
    entries: list[Entry] = []
    for spec in node.spec.options:
        value = node.values[spec.key]
        if value is not NOT_SET:
            entries.append(Option(spec.name, spec.type.format(value)))
    for sub in node.spec.sections:
        child = node.sections[sub.key]
        children = child.values() if isinstance(child, dict) else [] if child is None else [child]
        for c in children:
            entries.append(Section(sub.keyword, c.name, _entries(c)))
    return tuple(entries)
