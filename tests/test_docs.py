"""The project's documentation: links resolve, every result column is defined, code references exist.

docs/ is where a reader goes from a Parquet column or a config key to its definition and the code
that computes it, so these tests fail when a link, an anchor, a column definition or a referenced
function goes missing. Anchors are computed the way GitHub renders headings.
"""

from __future__ import annotations

import importlib
import re
import subprocess
from functools import cache
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
#: The packages whose dotted names (`pkg.module.attr`) the docs may cite.
PACKAGES = ("bench", "optimizers", "analysis", "launchers")

_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.M | re.S)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_HEADING = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.M)
_HTML_ANCHOR = re.compile(r"<a\s+(?:id|name)=\"([^\"]+)\"", re.I)
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")


def markdown_files() -> list[Path]:
    """Every Markdown page under docs/ and the repository README."""
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def _prose(text: str) -> str:
    """Markdown without fenced blocks and inline code, where links and headings are not links."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link targets and punctuation dropped, lower case,
    spaces to hyphens (letters, digits, ``_`` and ``-`` survive, non-ASCII letters included)."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    """Anchors of a Markdown file: its headings (duplicates numbered -1, -2, … as GitHub does)
    and explicit ``<a id=…>`` / ``<a name=…>`` targets."""
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set(_HTML_ANCHOR.findall(text))
    for _, title in _HEADING.findall(text):
        slug = github_slug(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return frozenset(out)


def broken_link(source: Path, target: str) -> str | None:
    """Why a relative link from ``source`` does not resolve, or None (external links are skipped)."""
    if _SCHEME.match(target) or target.startswith("//"):
        return None
    path_part, _, fragment = target.partition("#")
    dest = (source.parent / unquote(path_part)).resolve() if path_part else source
    if not dest.exists():
        return f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}"
    if fragment and dest.suffix == ".md" and unquote(fragment) not in anchors(dest):
        return f"{target}: no heading with anchor #{fragment} in {dest.relative_to(ROOT)}"
    return None


def test_github_slug_follows_github() -> None:
    # Cases checked against github.com's rendering rules: punctuation and backticks dropped,
    # underscores, digits and non-ASCII letters kept, each space a hyphen.
    assert github_slug("Theorem 1 decomposition") == "theorem-1-decomposition"
    assert github_slug("`layer_fits` — the table") == "layer_fits--the-table"
    assert github_slug("Rank-matched ratios (ρ)") == "rank-matched-ratios-ρ"
    assert github_slug("See [the docs](x.md#y)") == "see-the-docs"


@pytest.mark.parametrize("page", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    links = _LINK.findall(_prose(page.read_text(encoding="utf-8")))
    problems = [why for target in links if (why := broken_link(page, target))]
    assert not problems, f"{page.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def _documented_names() -> set[str]:
    """Everything written in backticks anywhere under docs/."""
    return {
        name
        for page in DOCS.rglob("*.md")
        for name in re.findall(r"`([^`\n]+)`", page.read_text(encoding="utf-8"))
    }


def _table_columns() -> dict[str, list[str]]:
    """Declared columns of the curvature and layer_fits tables.

    ``curvature`` is declared in `bench.results.schema`; ``layer_fits`` is produced by
    `analysis.curvature` (its identifying columns plus ``LAYER_FITS_COLUMNS``), and by the schema
    too once it declares the table.
    """
    from analysis import curvature as fits_table
    from bench.results import schema

    layer_fits = [
        *fits_table.TRIAL_COLUMNS,
        *fits_table.LAYER_KEY,
        *fits_table.LAYER_INFO,
        *fits_table.OPTIONAL_INFO,
        *fits_table.LAYER_FITS_COLUMNS,
    ]
    if "layer_fits" in schema.TABLES:
        layer_fits += schema.TABLES["layer_fits"].names
    return {
        "curvature": list(schema.TABLES["curvature"].names),
        "layer_fits": list(dict.fromkeys(layer_fits)),
    }


@pytest.mark.parametrize("table", ["curvature", "layer_fits"])
def test_every_column_is_defined_in_docs(table: str) -> None:
    columns = _table_columns()[table]
    assert len(columns) > 10  # the declarations were found
    missing = [c for c in columns if c not in _documented_names()]
    assert not missing, f"{table} columns with no `backticked` definition under docs/: {missing}"


def _resolve(dotted: str) -> bool:
    """Whether ``pkg.module.attr…`` names a module or an attribute (a pydantic field counts)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for name in parts[cut:]:
            fields = getattr(obj, "model_fields", None)
            if hasattr(obj, name):
                obj = getattr(obj, name)
            elif isinstance(fields, dict) and name in fields:
                obj = fields[name]
            else:
                return False
        return True
    return False


def test_code_and_file_references_in_docs_exist() -> None:
    dotted = re.compile(rf"^(?:{'|'.join(PACKAGES)})(?:\.\w+)+$")
    path_like = re.compile(r"^[\w.-]+(?:/[\w.-]+)+\.(?:py|yaml|json|md|toml)$")
    names = _documented_names()
    bad = sorted(n for n in names if dotted.match(n) and not _resolve(n))
    bad += sorted(n for n in names if path_like.match(n) and not (ROOT / n).exists())
    assert not bad, f"docs cite code or files that do not exist: {bad}"


def test_code_citations_of_docs_resolve() -> None:
    """Every docs page (and ``#anchor``) that code, configs or tests cite exists, so a
    reader can follow a docstring's citation to its definition."""
    cited = re.compile(r"docs/[\w./-]+\.md(?:#[\w-]+)?")
    problems = []
    for path in _repository_files():
        if path.suffix not in (".py", ".yaml", ".yml", ".toml"):
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for target in cited.findall(line):
                why = broken_link(ROOT / "x.md", target)
                if why:
                    problems.append(f"{path.relative_to(ROOT)}:{i}: {target} -> {why}")
    assert not problems, "\n".join(problems)


def _repository_files() -> list[Path]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
        return [ROOT / p for p in listed if (ROOT / p).is_file()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: walk it, skipping hidden dirs
        return [
            p
            for p in ROOT.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(ROOT).parts)
        ]


def test_no_file_cites_the_external_paper_notes() -> None:
    notes = ("PAPER" + ".md").encode()  # spelled in two parts so this file does not cite it
    hits = []
    for path in _repository_files():
        data = path.read_bytes()
        if b"\0" in data or notes not in data:
            continue
        hits += [
            f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(data.splitlines(), 1) if notes in line
        ]
    assert not hits, f"{len(hits)} lines cite {notes.decode()}:\n  " + "\n  ".join(
        hits[:20]
    )
