"""The generated parts of spec/ match the code, and the schema covers the reference."""

from __future__ import annotations

from meta1.config import load_file
from meta1.config.schema import NOT_SET, walk
from meta1.tools import specgen
from conftest import CONFORMANCE, REPO


def test_generated_spec_files_are_up_to_date() -> None:
    assert specgen.drifted(str(REPO)) == [], "run: python3 -m meta1.tools.specgen --write"


def test_every_option_is_documented() -> None:
    for path, spec in walk():
        assert spec.doc, path
        for option in spec.options:
            assert option.doc and option.origin, (path, option.name)
            if option.default is NOT_SET and not option.required:
                assert option.unset_means or "default" in option.doc or path[-1:] in (
                    ("listen_socket",), ("socket",), ("tls",), ("map",)), (path, option.name)


def _explicit(node, path=()):
    """(section path, option key) of every option a loaded file sets itself."""
    for key in node.option_pos:
        yield path, key
    for key, child in node.sections.items():
        children = child.values() if isinstance(child, dict) else [child] if child is not None else []
        for c in children:
            yield from _explicit(c, path + (key,))


def test_every_option_of_the_schema_is_accepted_in_an_example_configuration() -> None:
    # "Every option the reference documents is accepted": the examples in conformance/
    # set every option and declare every section of the schema at least once.
    used = set()
    for example in sorted((CONFORMANCE / "examples").glob("*.conf")):
        used.update(_explicit(load_file(str(example)).root))
    missing = [
        ".".join(path + (option.name,))
        for path, spec in walk()
        for option in spec.options
        if (tuple(p.lower() for p in path), option.key) not in used
    ]
    assert missing == []
