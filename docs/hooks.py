"""MkDocs hooks: put the committed benchmark results into the site without copying them.

``benchmarks/results/`` (the report, its findings, its PNG plots and the smaller results
pages) lives outside ``docs/``. At build time every ``.md`` and ``.png`` file under it is
added to the site under ``results/`` (``benchmarks/results/quick/report.md`` becomes
``results/quick/report.md``), so the report's own relative image links keep working.

Pages link to those files by their path in the repository (``../benchmarks/results/...``),
which also works when the Markdown is read on GitHub; before MkDocs resolves links, such a
link is rewritten to the mounted copy. A link to any other file outside ``docs/`` is left
alone, and MkDocs' strict mode reports it as broken.
"""
from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path("benchmarks") / "results"
MOUNT = "results"
SUFFIXES = (".md", ".png")

# ](target) of a Markdown link or image; the target has no spaces and no closing bracket
LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def _repo_root(config) -> Path:
    return Path(config.config_file_path).resolve().parent


def _mounted(config) -> dict[Path, str]:
    """Absolute path of each results file -> its src_uri in the site."""
    root = _repo_root(config)
    results = root / RESULTS
    found = {}
    for path in sorted(results.rglob("*")):
        if path.is_file() and path.suffix in SUFFIXES:
            found[path.resolve()] = posixpath.join(MOUNT, path.relative_to(results).as_posix())
    return found


def on_files(files: Files, config) -> Files:
    for path, src_uri in _mounted(config).items():
        files.append(File.generated(config, src_uri, abs_src_path=str(path)))
    return files


def on_page_markdown(markdown: str, page, config, files: Files) -> str:
    source = page.file.abs_src_path
    if source is None:
        return markdown
    mounted = _mounted(config)
    here = Path(source).resolve().parent
    page_dir = posixpath.dirname(page.file.src_uri)

    def rewrite(match: re.Match) -> str:
        target = match.group(2)
        if "://" in target or target.startswith(("#", "/", "mailto:")):
            return match.group(0)
        path, sep, anchor = target.partition("#")
        src_uri = mounted.get((here / path).resolve())
        if src_uri is None:
            return match.group(0)
        relative = posixpath.relpath(src_uri, page_dir or ".")
        return f"{match.group(1)}{relative}{sep}{anchor}{match.group(3)}"

    return LINK.sub(rewrite, markdown)

