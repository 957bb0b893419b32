"""The documentation holds together: relative links resolve, README stays a front door, no query is copied."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = sorted(
    [
        README,
        *(ROOT / "docs").glob("*.md"),
        ROOT / "infra" / "README.md",
        ROOT / "examples" / "configs" / "azure" / "MIGRATION.md",
        ROOT / "CHANGELOG.md",
    ]
)
DOCS = sorted([README, *(ROOT / "docs").glob("*.md")])
QUERIES = sorted((ROOT / "infra" / "queries").glob("*.kql"))
README_MAX_LINES = 300

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)
INLINE_CODE = re.compile(r"`+[^`\n]*`+")
LINK = re.compile(r"(?<!!)\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def prose(text: str) -> str:
    """The text outside fenced code blocks and inline code, where links and headings live."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def fenced_blocks(text: str) -> list[str]:
    return [match.group(0).split("\n", 1)[1].rsplit("\n", 1)[0] for match in FENCE.finditer(text)]


def anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower-case, spaces to '-', punctuation other than '-' and '_' removed."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = anchor(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target for target in LINK.findall(prose(path.read_text(encoding="utf-8"))) if not target.startswith(EXTERNAL)
    ]


def query_lines(text: str) -> list[str]:
    """A .kql file's lines without comments and blank lines, stripped."""
    stripped = (line.strip() for line in text.splitlines())
    return [line for line in stripped if line and not line.startswith("//")]


def normalised(text: str) -> str:
    return "\n".join(line.strip() for line in text.splitlines() if line.strip())


def query_opening(lines: list[str]) -> list[str]:
    """The first two lines that start a query (a table and its first operator), after any `let`."""
    body = [line for line in lines if not line.startswith("let ")]
    return body[:2]


def test_there_should_be_pages_and_queries_to_check():
    assert all(page.is_file() for page in PAGES), [str(p) for p in PAGES if not p.is_file()]
    assert len(DOCS) > 1
    assert QUERIES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_should_resolve_when_it_names_a_file_or_an_anchor(page):
    broken = []
    for target in relative_links(page):
        path_part, _, fragment = target.partition("#")
        resolved = (page.parent / path_part).resolve() if path_part else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif fragment and resolved.suffix == ".md" and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with anchor #{fragment} in {resolved.relative_to(ROOT)}")
    assert not broken, broken


def test_anchor_should_follow_github_rules_when_a_heading_has_code_and_punctuation():
    assert anchor("Limitations (today)") == "limitations-today"
    assert anchor("The scope, and why it differs from the feature list") == (
        "the-scope-and-why-it-differs-from-the-feature-list"
    )
    assert anchor("5. First check: `test-auth`") == "5-first-check-test-auth"
    assert anchor("status, verify, reset") == "status-verify-reset"
    assert anchor("`streams[].transform`") == "streamstransform"


def test_links_should_be_found_when_outside_code_only():
    page = "see [a](docs/a.md#x) and [b](https://example.com) `[c](d.md)`\n```\n[e](f.md)\n```\n"
    assert [t for t in LINK.findall(prose(page)) if not t.startswith(EXTERNAL)] == ["docs/a.md#x"]


def test_readme_should_stay_a_front_door_when_the_docs_grow():
    lines = README.read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail to docs/"


@pytest.mark.parametrize("query", QUERIES, ids=lambda p: p.name)
def test_no_page_should_copy_a_query_when_infra_queries_holds_it(query):
    lines = query_lines(query.read_text(encoding="utf-8"))
    body = "\n".join(lines)
    opening = "\n".join(query_opening(lines))
    copies = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        if body in normalised(text):
            copies.append(f"{page.relative_to(ROOT)}: the whole query")
        for block in fenced_blocks(text):
            if normalised(block) == body:
                copies.append(f"{page.relative_to(ROOT)}: a code block equal to the query")
            elif opening in normalised(block):
                copies.append(f"{page.relative_to(ROOT)}: a code block starting the query ({opening!r})")
    assert not copies, f"link ../infra/queries/{query.name} instead: {copies}"


def test_the_copy_check_should_catch_a_query_when_it_is_pasted_indented_or_drifted():
    lines = query_lines('// comment\nlet step = 5m;\ncustomMetrics\n| where name == "x"\n| summarize n = count()\n')
    page = "\n".join(
        [
            "text",
            "```kusto",
            "  customMetrics",
            '  | where name == "x"',
            "  | summarize n = count() by bin(timestamp, 1h)",
            "```",
        ]
    )
    assert "\n".join(query_opening(lines)) in normalised(fenced_blocks(page)[0])
    assert "\n".join(lines) not in normalised(page)  # a drifted copy is still caught, by its opening
