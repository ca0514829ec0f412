"""The code of docs/adaptive.md runs as written, and prints what the page says it prints."""

import contextlib
import io
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "adaptive.md"


def _blocks():
    text = DOC.read_text(encoding="utf-8")
    return re.findall(r"```(\w+)\n(.*?)```", text, flags=re.S)


def test_every_python_block_runs_and_prints_what_the_page_shows():
    blocks = _blocks()
    python = [i for i, (lang, _) in enumerate(blocks) if lang == "python"]
    assert len(python) >= 2
    for i in python:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(blocks[i][1], f"{DOC.name} block {i}", "exec"), {"__name__": "docs"})  # noqa: S102
        following = blocks[i + 1] if i + 1 < len(blocks) else None
        if following is not None and following[0] == "text":
            assert printed.getvalue().strip() == following[1].strip()
        else:
            assert printed.getvalue() == "" or "step" in printed.getvalue()
