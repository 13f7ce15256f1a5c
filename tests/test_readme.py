"""Every ```python block of README.md runs as pasted.

Conventions (README.md):

* a block runs in a fresh namespace, unless its first line is the comment
  ``# continues the previous block``: then it runs in (a copy of) the namespace that the
  previous python block left, as a user pasting both into one session would;
* an HTML comment ``<!-- test: slow -->`` on the line just before the opening fence (invisible
  on the rendered page) marks a heavy block (the ones that load the real language model) as
  ``slow``.

One test per block, named after the heading the block sits under. Blocks run in this
process (one JAX import, shared compilation caches) in a temporary working directory. Under
pytest-xdist a continuing block may land on another worker than its predecessor; it then
re-runs the chain of blocks it continues first.
"""

from __future__ import annotations

import os
import re
from typing import NamedTuple

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
CONTINUES = "# continues the previous block"
SLOW_MARK = "<!-- test: slow -->"


class Block(NamedTuple):
    index: int  # position among the README's python blocks
    lang: str
    heading: str
    code: str
    line: int  # 1-based line of the opening fence
    slow: bool

    @property
    def continues(self) -> bool:
        return self.code.lstrip().startswith(CONTINUES)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "top"


def parse_blocks(text: str) -> list[Block]:
    """Fenced blocks of ``text`` with the heading they sit under (fences never nest here)."""
    blocks, heading, fence, buf, start, prev = [], "top", None, [], 0, ""
    python_index = 0
    for i, line in enumerate(text.splitlines(), 1):
        if fence is None:
            m = re.match(r"^```(\w*)\s*$", line)
            if m:
                fence, buf, start = m.group(1), [], i
                slow = prev.strip() == SLOW_MARK
            elif line.startswith("#"):
                heading = line.lstrip("#").strip()
            prev = line
        elif line.startswith("```"):
            idx = python_index if fence == "python" else -1
            python_index += fence == "python"
            blocks.append(Block(idx, fence, heading, "\n".join(buf) + "\n", start, slow))
            fence, prev = None, line
        else:
            buf.append(line)
    assert fence is None, f"README.md: unclosed code fence opened at line {start}"
    return blocks


BLOCKS = parse_blocks(open(README, encoding="utf-8").read())
PYTHON = [b for b in BLOCKS if b.lang == "python"]


def _ids(blocks):
    seen: dict[str, int] = {}
    out = []
    for b in blocks:
        slug = _slug(b.heading)
        seen[slug] = seen.get(slug, 0) + 1
        out.append(slug if seen[slug] == 1 else f"{slug}-{seen[slug]}")
    return out


# namespaces left by blocks that a later block continues (only those are kept)
_NEEDED = {b.index - 1 for b in PYTHON if b.continues}
_NAMESPACES: dict[int, dict] = {}


def _run(block: Block) -> dict:
    if block.continues:
        if block.index == 0:
            raise AssertionError(f"README.md:{block.line}: the first python block cannot continue a previous one")
        prev = PYTHON[block.index - 1]
        if prev.index not in _NAMESPACES:
            _run(prev)  # its own test ran elsewhere (another xdist worker) or failed
        ns = dict(_NAMESPACES[prev.index])
    else:
        ns = {"__name__": "__main__"}
    code = compile(block.code, f"README.md:{block.line} ({block.heading})", "exec")
    exec(code, ns)
    if block.index in _NEEDED:
        _NAMESPACES[block.index] = ns
    return ns


@pytest.mark.parametrize(
    "block",
    [pytest.param(b, marks=[pytest.mark.slow] if b.slow else []) for b in PYTHON],
    ids=_ids(PYTHON),
)
def test_readme_python_block_runs(block, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # whatever a block writes stays out of the tree
    _run(block)


def test_readme_blocks_are_well_formed():
    assert len(PYTHON) >= 8
    headings = {b.heading for b in PYTHON}
    # the sections promised to have runnable examples
    for h in ("Particle Gibbs (conditional SMC)", "Smoothing, learning and SMC samplers", "Many devices"):
        assert h in headings, h
    for b in PYTHON:
        # a continuation marker is only meaningful as the first line
        assert CONTINUES not in b.code.strip().splitlines()[1:], f"README.md:{b.line}"
    # the slow marker only ever precedes a python fence
    text = open(README, encoding="utf-8").read().splitlines()
    for i, line in enumerate(text):
        if line.strip() == SLOW_MARK:
            assert text[i + 1].startswith("```python"), f"README.md:{i + 1}: {SLOW_MARK} must precede a python block"


def test_readme_toml_blocks_parse():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    tomls = [b for b in BLOCKS if b.lang == "toml"]
    assert tomls
    for b in tomls:
        cfg = tomllib.loads(b.code)
        assert cfg["methods"] and cfg["budgets"], f"README.md:{b.line}"


def test_readme_names_both_test_tiers():
    tests = [b for b in BLOCKS if b.lang == "bash" and b.heading == "Tests"]
    assert len(tests) == 1, "README needs one bash block under '## Tests'"
    lines = [ln.split("#")[0].strip() for ln in tests[0].code.splitlines() if ln.strip()]
    assert 'python -m pytest -q -m "not slow" -n 2' in lines  # the fast tier
    quickstart = next(b for b in BLOCKS if b.lang == "bash").code.splitlines()
    full = quickstart[1].split("&&")[-1].strip()  # the full suite, as the quickstart runs it
    assert full in lines, (full, lines)
