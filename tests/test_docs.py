"""Every citation of a ``docs/*.md`` page resolves, and nothing cites a path outside the repository.

A citation is ``docs/<page>.md`` followed by section labels, as the docstrings and configs write them:
``docs/methods.md §0.7 and §13``, ``docs/methods.md §9, 12, 17``, ``docs/data.md §4.3-4.4``,
``docs/protocols.md P1, P2 and P4``, ``docs/protocols.md §M.1 (Vandenhende variant), §M.4 and P5``,
``docs/protocols.md R.3``, ``docs/cso.md §5 #12`` (row 12 of §5's table), and ``docs/protocols.md P1
"Augmentation"`` (a phrase of that section). A label exists when a heading of the page starts with it
(``### 0.1 …``, ``## P1. …``, ``### M.6 …``). Inside ``docs/`` the pages cite each other without the prefix
(``protocols.md P3``) and with markdown links, whose files and ``#anchors`` must exist too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCANNED_SUFFIXES = {".py", ".yaml", ".yml", ".md", ".toml", ".cfg", ".txt"}
SCANNED_NAMES = {"Makefile"}
SKIPPED_DIRS = {".git", ".venv", "venv", "__pycache__", "build", "dist", "data", "runs", "wandb", "lightning_logs"}

# A section label: §-prefixed (§3, §0.7, §M.6, §STL) or one of the bare forms P1, M.6, R.3.
_LABEL = r"(?:§\s?(?:[A-Z]+(?:\.\d+)*|\d+(?:\.\d+)*)|P\d+|[A-Z]\.\d+)"
_NEXT_LABEL = rf"(?:{_LABEL}|\d+(?:\.\d+)*)"  # after the first label a bare number continues the list (§9, 12)
_ITEM = r'(?:\s+#\d+)?(?:\s+"[^"\n]+")?(?:\s*\([^()]*\))?'
_SEP = r"(?:\s*[,–-]\s*|\s+and\s+|\s*,\s*and\s+)"
_PHRASE = r'"[^"\n]+"'
_REFS = rf"(?:{_LABEL}{_ITEM}(?:{_SEP}(?:{_NEXT_LABEL}{_ITEM}|{_PHRASE}))*|{_PHRASE})"
CITATION = re.compile(rf"(?<![\w/.-])(docs/)?([\w-]+)\.md[`'\"]*(?:[ \t]+({_REFS}))?")
REF_PART = re.compile(
    rf'(?P<label>{_NEXT_LABEL})(?:\s+#(?P<row>\d+))?(?:\s+"(?P<phrase>[^"\n]+)")?|"(?P<bare_phrase>[^"\n]+)"')

# A path outside the repository: the shared research folder the docstrings used to cite.
OUTSIDE = re.compile(r"(?<![\w.-])(?:\.\./shared\b|/work/shared\b|research/|shared research notes)")
URL = re.compile(r"[a-z]+://\S+")
# benchmark/scoring.py reads the shared copy of the reference tables as data when it exists; that file name,
# in that module only, is not a citation.
DATA_READS = {"benchmark/scoring.py": re.compile(r"research/reference_tables\.yaml")}


@dataclass(frozen=True)
class Citation:
    source: str
    line: int
    page: str
    refs: str
    prefixed: bool


def scanned_files() -> list[Path]:
    files = []
    for path in sorted(ROOT.rglob("*")):
        rel = path.relative_to(ROOT)
        if any(part in SKIPPED_DIRS or part.startswith(".") or part.endswith(".egg-info") for part in rel.parts):
            continue
        if path == Path(__file__).resolve():
            continue  # this file's examples of citations and outside paths
        if path.is_file() and (path.suffix in SCANNED_SUFFIXES or path.name in SCANNED_NAMES):
            files.append(path)
    return files


def find_citations(path: Path) -> list[Citation]:
    """Citations of docs pages in one file; outside ``docs/`` only the ``docs/``-prefixed ones and bare page
    names followed by a section label (which must then carry the prefix)."""
    text = path.read_text(encoding="utf-8")
    in_docs = path.parent == DOCS
    found = []
    for match in CITATION.finditer(text):
        prefixed, page, refs = bool(match.group(1)), match.group(2), match.group(3) or ""
        if not (prefixed or in_docs or refs):
            continue
        if in_docs and not prefixed and not (DOCS / f"{page}.md").is_file() and not refs:
            continue
        line = text.count("\n", 0, match.start()) + 1
        found.append(Citation(str(path.relative_to(ROOT)), line, page, refs, prefixed))
    return found


def _normalise(label: str) -> str:
    return label.replace("§", "").strip()


def headings(page: Path) -> list[tuple[str, str]]:
    """(label, heading text) of every heading; the label is its leading ``0.1`` / ``P1`` / ``M.6`` token."""
    out = []
    for line in page.read_text(encoding="utf-8").splitlines():
        match = re.match(r"#{1,6}\s+(.*)", line)
        if match:
            title = match.group(1).strip()
            label = re.match(r"((?:[A-Z]+\d*|\d+)(?:\.\d+)*)\.?(?:\s|$)", title)
            out.append((label.group(1) if label else "", title))
    return out


def section_text(page: Path, label: str) -> str:
    """The text under the heading labelled ``label``, up to the next heading of the same or a higher level."""
    lines = page.read_text(encoding="utf-8").splitlines()
    start = level = None
    for i, line in enumerate(lines):
        match = re.match(r"(#{1,6})\s+(.*)", line)
        if not match:
            continue
        depth = len(match.group(1))
        if start is not None and depth <= level:
            return "\n".join(lines[start:i])
        token = re.match(r"((?:[A-Z]+\d*|\d+)(?:\.\d+)*)\.?(?:\s|$)", match.group(2).strip())
        if start is None and token and token.group(1) == label:
            start, level = i, depth
    return "\n".join(lines[start:]) if start is not None else ""


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def problems_of(citation: Citation) -> list[str]:
    where = f"{citation.source}:{citation.line}"
    page = DOCS / f"{citation.page}.md"
    if not citation.prefixed and not citation.source.startswith("docs/"):
        return [f"{where}: cites {citation.page}.md {citation.refs}; write docs/{citation.page}.md"]
    if not page.is_file():
        return [f"{where}: cites docs/{citation.page}.md, which the repository lacks"]
    labels = {label for label, _ in headings(page)}
    problems = []
    refs = re.sub(r"\s*\([^()]*\)", "", citation.refs)  # a parenthetical remark is not a label
    label = ""
    for part in REF_PART.finditer(refs):
        if part.group("bare_phrase"):  # a phrase of the section cited just before, or of the page
            scope = section_text(page, label) if label else page.read_text(encoding="utf-8")
            if part.group("bare_phrase") not in scope:
                problems.append(f'{where}: docs/{citation.page}.md {label} has no "{part.group("bare_phrase")}"')
            continue
        label = _normalise(part.group("label"))
        if label not in labels:
            problems.append(f"{where}: docs/{citation.page}.md has no section {label}")
            continue
        body = section_text(page, label)
        if part.group("row") and not re.search(rf"^\|\s*{part.group('row')}\s*\|", body, re.MULTILINE):
            problems.append(f"{where}: docs/{citation.page}.md §{label} has no row #{part.group('row')}")
        if part.group("phrase") and part.group("phrase") not in body:
            problems.append(f'{where}: docs/{citation.page}.md {label} has no "{part.group("phrase")}"')
    return problems


@pytest.fixture(scope="module")
def citations() -> list[Citation]:
    return [c for path in scanned_files() for c in find_citations(path)]


def test_the_parser_reads_the_citation_forms():
    text = ('see docs/methods.md §0.7 and §13 Recommended; docs/methods.md §9, 12, 17). '
            'docs/protocols.md §M.1 (Vandenhende variant), §M.4 and P5 (losses). docs/cso.md §5 #12). '
            'docs/protocols.md P1 "Augmentation"); docs/data.md §4.3-4.4; docs/protocols.md R.3). '
            'docs/protocols.md "Open items"; ``docs/protocols.md`` §M.6 of; docs/cso.md``. '
            'docs/protocols.md P6, "MGDA-UB\'s CelebA differs"; Sener')
    refs = [m.group(3) or "" for m in CITATION.finditer(text)]
    assert refs == ["§0.7 and §13", "§9, 12, 17", "§M.1 (Vandenhende variant), §M.4 and P5 (losses)",
                    "§5 #12", 'P1 "Augmentation"', "§4.3-4.4", "R.3", '"Open items"', "§M.6", "",
                    'P6, "MGDA-UB\'s CelebA differs"']
    labels = [_normalise(p.group("label")) for p in REF_PART.finditer(refs[2]) if p.group("label")]
    assert labels == ["M.1", "M.4", "P5"]
    assert [p.group("label") for p in REF_PART.finditer("§4.3-4.4")] == ["§4.3", "4.4"]  # both ends of a range
    assert anchor("M.6 Δm, Δp and mean rank") == "m6-δm-δp-and-mean-rank"


def test_a_missing_section_is_reported(tmp_path):
    assert problems_of(Citation("x.py", 1, "methods", "§13 and §99", True)) == [
        "x.py:1: docs/methods.md has no section 99"]
    assert problems_of(Citation("x.py", 2, "nowhere", "", True)) == [
        "x.py:2: cites docs/nowhere.md, which the repository lacks"]
    assert problems_of(Citation("x.py", 3, "cso", "§5 #99", True)) == ["x.py:3: docs/cso.md §5 has no row #99"]
    assert problems_of(Citation("x.py", 4, "protocols", 'P1 "Nonexistent phrase"', True)) == [
        'x.py:4: docs/protocols.md P1 has no "Nonexistent phrase"']
    assert problems_of(Citation("x.py", 5, "protocols", 'P7, "MGDA-UB\'s CelebA differs"', True)) == [
        'x.py:5: docs/protocols.md P7 has no "MGDA-UB\'s CelebA differs"']
    assert problems_of(Citation("x.py", 6, "methods", "§4.3-4.4", True)) == [
        "x.py:6: docs/methods.md has no section 4.3", "x.py:6: docs/methods.md has no section 4.4"]


def test_the_code_cites_the_docs(citations):
    cited = {c.page for c in citations if not c.source.startswith("docs/")}
    assert {"methods", "protocols", "data", "cso"} <= cited
    assert len([c for c in citations if c.source.startswith(("benchmark/", "models/", "datamodules/"))]) > 50


def test_every_citation_resolves(citations):
    problems = [p for c in citations for p in problems_of(c)]
    assert not problems, "unresolved docs citations:\n  " + "\n  ".join(problems)


def test_links_between_docs_pages_resolve():
    problems = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        for match in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = match.group(1)
            if re.match(r"[a-z]+://", target):
                continue
            file_part, _, fragment = target.partition("#")
            linked = (page.parent / file_part) if file_part else page
            line = text.count("\n", 0, match.start()) + 1
            if not linked.is_file():
                problems.append(f"docs/{page.name}:{line}: link to missing {file_part}")
            elif fragment and linked.suffix == ".md" and fragment not in {anchor(t) for _, t in headings(linked)}:
                problems.append(f"docs/{page.name}:{line}: no heading #{fragment} in {linked.name}")
    assert not problems, "broken links:\n  " + "\n  ".join(problems)


def test_the_outside_pattern():
    hits = [m.group(0) for m in OUTSIDE.finditer(
        "see research/methods.md, ../shared/x, /work/shared/y, the shared research notes; "
        "github.com/zalandoresearch/fashion-mnist")]
    assert hits == ["research/", "../shared", "/work/shared", "shared research notes"]


def test_nothing_cites_a_path_outside_the_repository():
    problems = []
    for path in scanned_files():
        rel = str(path.relative_to(ROOT))
        exempt = DATA_READS.get(rel)
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            urls = [u.span() for u in URL.finditer(line)]
            for match in OUTSIDE.finditer(line):
                if exempt is not None and exempt.search(line):
                    continue
                if any(start <= match.start() < end for start, end in urls):
                    continue
                problems.append(f"{rel}:{number}: {match.group(0)!r} in {line.strip()[:120]!r}")
    assert not problems, "paths outside the repository:\n  " + "\n  ".join(problems)
