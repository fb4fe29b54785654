"""The generated parts of spec/ match the code (the index the spec files too), every
drawing shows its current diagram, and the schema covers the reference."""

from __future__ import annotations

import re
import shutil
import xml.dom.minidom

import pytest

from meta1.config import load_file
from meta1.config.schema import NOT_SET, walk
from meta1.tools import specgen
from conftest import CONFORMANCE, REPO


def test_generated_spec_files_are_up_to_date() -> None:
    assert specgen.drifted(str(REPO)) == [], "run: python3 -m meta1.tools.specgen --write"


def test_every_drawing_carries_the_hash_of_its_current_diagram() -> None:
    # Needs no graphviz: the SVG's stamp names the SHA-256 of the .dot the code renders now.
    assert specgen.stale_diagrams(str(REPO)) == [], "run: python3 -m meta1.tools.specgen --write (with graphviz)"


def test_every_drawing_is_well_formed_xml() -> None:
    # The stamp is an XML comment: it must not break the file (no "--" inside it).
    drawings = sorted((REPO / "spec" / "machines").glob("*.svg"))
    assert len(drawings) == len(specgen.diagrams())
    for path in drawings:
        xml.dom.minidom.parse(str(path))


LINK = re.compile(r"\]\(([^)#]+)(?:#([^)]*))?\)")   # (file, anchor or "")


def test_the_index_links_every_file_machine_model_and_decision() -> None:
    spec = REPO / "spec"
    index = (spec / "index.md").read_text(encoding="utf-8")
    links = set(LINK.findall(index))
    targets = {target for target, _ in links}
    assert all((spec / target).exists() for target in targets), sorted(t for t in targets if not (spec / t).exists())
    unanchored = [f"{target}#{anchor}" for target, anchor in links
                  if anchor and f'<a id="{anchor}"></a>' not in (spec / target).read_text(encoding="utf-8")]
    assert unanchored == []
    files = {str(p.relative_to(spec)) for p in spec.rglob("*.md")} - {"index.md"}
    models = {str(p.relative_to(spec)) for p in (spec / "models").glob("*.py")}
    assert files | models <= targets, sorted((files | models) - targets)
    stated = sum(len(re.findall(r"\*\*D-[A-Z0-9]+-\d", p.read_text(encoding="utf-8")))
                 for p in spec.rglob("*.md") if p.name != "index.md")
    listed = re.findall(r"^- \[(D-[A-Z0-9]+-\d+)\]\(", index, re.M)
    assert len(listed) == stated and len(set(listed)) == len(listed), "a decision is missed or stated twice"


def test_decision_titles_across_lines_and_without_the_dash() -> None:
    text = ("**D-X-1 — One line.** Reason.\n* **D-EL-9 Old form**, reason\n"
            "**D-X-2 — Over\ntwo lines:** reason **D-X-3 — a\n**not bold")
    assert specgen.decisions(text) == [("D-X-1", "One line"), ("D-EL-9", "Old form"),
                                       ("D-X-2", "Over two lines"), ("D-X-3", "a")]


def test_a_decision_without_its_anchor_stops_the_index(spec_copy) -> None:
    policy = spec_copy / "spec" / "policy.md"
    policy.write_text(policy.read_text(encoding="utf-8").replace('<a id="d-pol-1"></a>', ""), encoding="utf-8")
    assert specgen.missing_anchors(policy.read_text(encoding="utf-8")) == ["D-POL-1"]
    with pytest.raises(ValueError, match="spec/policy.md: D-POL-1"):
        specgen.render_index(str(spec_copy))


@pytest.fixture
def spec_copy(tmp_path):
    """A checkout's spec/ to write into (the real one stays as committed)."""
    shutil.copytree(REPO / "spec", tmp_path / "spec")
    return tmp_path


def test_without_graphviz_the_drawings_are_skipped_with_a_note(spec_copy, monkeypatch, capsys) -> None:
    (spec_copy / "spec" / "machines" / "smtpc-plan.svg").unlink()
    monkeypatch.setattr(specgen.shutil, "which", lambda name: None)
    specgen.write_all(str(spec_copy))
    assert "spec/machines/smtpc-plan.svg" in capsys.readouterr().err
    assert specgen.drifted(str(spec_copy)) == []
    assert specgen.stale_diagrams(str(spec_copy)) == ["spec/machines/smtpc-plan.svg"]


def test_a_drawing_of_an_old_diagram_is_stale(spec_copy) -> None:
    drawing = spec_copy / "spec" / "machines" / "qmgr-recipient.svg"
    drawing.write_text(re.sub(r"sha256 [0-9a-f]{64}", "sha256 " + "0" * 64, drawing.read_text()))
    assert specgen.stale_diagrams(str(spec_copy)) == ["spec/machines/qmgr-recipient.svg"]


@pytest.mark.skipif(shutil.which("dot") is None, reason="graphviz is not installed")
def test_only_stale_drawings_are_redrawn(spec_copy) -> None:
    machines = spec_copy / "spec" / "machines"
    (machines / "smtpc-plan.svg").unlink()
    kept = (machines / "qmgr-recipient.svg").read_bytes()
    assert specgen.draw(str(spec_copy), shutil.which("dot")) == ["spec/machines/smtpc-plan.svg"]
    assert (machines / "qmgr-recipient.svg").read_bytes() == kept      # whatever this graphviz would draw
    assert specgen.stale_diagrams(str(spec_copy)) == []
    xml.dom.minidom.parse(str(machines / "smtpc-plan.svg"))


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
