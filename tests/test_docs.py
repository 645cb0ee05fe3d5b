"""The documentation's links lead somewhere: README.md and docs/*.md link to files that exist and to headings those
files have (as GitHub makes a heading's anchor), and a message or comment of the code that names a section
(`README "On a GPU"`, `docs/gpu.md, "On a GPU"`) names one that is there."""

import re
from pathlib import Path

import pytest

from helpers import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
CODE = [*sorted((REPO / "src" / "finetune").glob("*.py")), *sorted((REPO / "workflow").rglob("*.smk")),
        *sorted((REPO / "workflow").rglob("*.yaml")), REPO / "config" / "config.yaml", *sorted((REPO / "bench").glob("*.py")),
        *sorted((REPO / "tests").glob("*.py")), *sorted((REPO / "profiles").rglob("*.yaml")), REPO / "Makefile"]


def without_code_blocks(text):
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation but `-` and `_` dropped, spaces as `-`."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def headings(path):
    return [m.group(1) for m in re.finditer(r"^#{1,6} (.*)$", without_code_blocks(path.read_text()), re.M)]


def run_in_titles(path):
    """The bold run-in titles (`**How the split is drawn.** Per class, ...`) a text can name as sections."""
    return re.findall(r"^(?:- )?\*\*([^*]+?)\.\*\*", path.read_text(), re.M)


def links(path):
    text = without_code_blocks(path.read_text())
    text = re.sub(r"`[^`\n]*`", "", text)
    return re.findall(r"\]\(([^)\s]+)\)", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_relative_link_reaches_a_file_and_a_heading_of_it(doc):
    broken = []
    for target in links(doc):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, fragment = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif fragment and fragment not in {anchor(h) for h in headings(dest)}:
            broken.append(f"{target}: no heading of {dest.name} has the anchor #{fragment}")
    assert not broken, f"{doc.name}: " + "; ".join(broken)


def sections_of(name):
    """A file's headings and run-in titles, and each heading's words before a parenthesis or a colon."""
    path = REPO / name
    return ({*headings(path), *run_in_titles(path)}
            | {re.split(r" \(|: ", h)[0] for h in headings(path)})


def readme_sections():
    """What `README "X"` may name: README's headings and the sections its links into docs/ name."""
    return set(headings(REPO / "README.md")) | {
        m.strip('"') for m in re.findall(r"\[([^\]]+)\]\(docs/[^)]+\)", (REPO / "README.md").read_text())}


def test_a_section_the_code_names_is_there():
    """`README "X"` means a section of README.md or one its Documentation table lists (the docs' headings);
    `docs/f.md, "X"` a section of that file."""
    everywhere = set().union(*(sections_of(p.relative_to(REPO).as_posix()) for p in DOCS))
    readme_index = readme_sections()
    assert readme_index >= {"When things go wrong", "Walltime, failures and resuming", "On a GPU"}, readme_index
    missing = []
    for path in CODE:
        text = re.sub(r"\\\"", '"', path.read_text())
        text = re.sub(r'"\s*\n\s*f?"', "", text)  # a message's text continued on the next line
        text = re.sub(r"\s*\n\s*#?\s*", " ", text)  # and a docstring's or comment's
        for section in re.findall(r'README(?:\.md)?,? "([A-Z][^"]{2,80})"', text):
            if section not in readme_index and section not in {"it comes out different"}:
                missing.append(f"{path.name}: README \"{section}\"")
        for doc, section in re.findall(r'(docs/[\w.-]+\.md),? "([A-Z][^"]{2,80})"', text):
            if not (REPO / doc).exists() or section not in sections_of(doc):
                missing.append(f"{path.name}: {doc} \"{section}\"")
    assert everywhere and not missing, missing


def test_a_section_a_document_names_elsewhere_is_linked():
    """A section named in quotes ("Walltime, failures and resuming") that is not in the same file is a link to the
    file that has it (text moved from README to docs/ left such names pointing nowhere); `README "X"` in the docs
    names a section README lists."""
    owners = {}
    for doc in DOCS:
        for section in sections_of(doc.relative_to(REPO).as_posix()):
            owners.setdefault(section, []).append(doc.relative_to(REPO).as_posix())
    readme = readme_sections()
    unlinked = []
    for doc in DOCS:
        name = doc.relative_to(REPO).as_posix()
        text = re.sub(r"`[^`\n]*`", "", without_code_blocks(doc.read_text()))
        text = re.sub(r"\s*\n\s*", " ", re.sub(r"\[[^\]]*\]\([^)]*\)", "", text))  # links out; a quote over lines
        for found in re.finditer(r'"([A-Z][^"]{2,80})"', text):
            quoted, before = found.group(1), text[max(0, found.start() - 40):found.start()]
            if quoted in owners and name not in owners[quoted] and not any(
                    f"{Path(owner).name}" in before for owner in owners[quoted]):  # `docs/gpu.md, "On a GPU"`
                unlinked.append(f"{name}: \"{quoted}\" is in {', '.join(owners[quoted])}, neither linked nor named")
        unlinked += [f"{name}: README \"{s}\"" for s in re.findall(r'README,? "([A-Z][^"]{2,80})"', text)
                     if s not in readme]
    assert not unlinked, unlinked
