"""MkDocs hooks (``mkdocs.yml`` ``hooks:``): the site's home page is the repository's README.

The README lives at the repository root, outside ``docs/``; it is added to the site as ``index.md``
(read at build time, never copied by hand) and its links into ``docs/`` are made relative to the site.
"""

from __future__ import annotations

import re
from pathlib import Path


def on_files(files, config):
    """Add ``README.md`` (one level above ``docs_dir``) as the site's ``index.md``."""
    from mkdocs.structure.files import File

    readme = Path(config["docs_dir"]).parent / "README.md"
    if readme.is_file() and files.get_file_from_path("index.md") is None:
        files.append(File.generated(config, "index.md", abs_src_path=str(readme)))
    return files


def on_page_markdown(markdown, page, config, files):
    """In the README, ``docs/x.md`` links become ``x.md``; links to other repository files become plain text
    (the site holds only ``docs/``)."""
    if page.file.src_uri != "index.md":
        return markdown

    def fix(match: re.Match) -> str:
        text, target = match.group(1), match.group(2)
        if re.match(r"[a-z]+://|#", target):
            return match.group(0)
        if target.startswith("docs/"):
            return f"[{text}]({target.removeprefix('docs/')})"
        return text

    return re.sub(r"\[([^\]]+)\]\(([^)\s]+)\)", fix, markdown)
