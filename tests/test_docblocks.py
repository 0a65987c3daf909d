"""Generated Markdown blocks: only the text between a block's markers changes."""
import pytest

from ptqkit.docblocks import replace_block


def test_replace_block_rewrites_only_its_block(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("intro\n<!-- t:begin (written by `old`) -->\nold table\n<!-- t:end -->\noutro\n", encoding="utf-8")
    replace_block(doc, "t", "python tools/x.py", "| new |\n")
    assert doc.read_text(encoding="utf-8") == (
        "intro\n<!-- t:begin (written by `python tools/x.py`) -->\n| new |\n<!-- t:end -->\noutro\n")


def test_replace_block_without_markers_fails_and_leaves_the_file(tmp_path):
    doc = tmp_path / "doc.md"
    doc.write_text("no markers here\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no block 'missing'"):
        replace_block(doc, "missing", "cmd", "body")
    assert doc.read_text(encoding="utf-8") == "no markers here\n"
