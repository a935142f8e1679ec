"""Every transcript here (*.smtp, *.imap, *.pop3), replayed through its layer (runner.py).

TRANSCRIPTS_WRITE=1 rewrites the files from what the proxy does: review the diff
before committing it.
"""

import os
from pathlib import Path

import pytest

from .runner import LAYERS, replay

HERE = Path(__file__).parent
FILES = sorted(path for suffix in LAYERS for path in HERE.glob(f"*{suffix}"))
# Where each protocol's transcripts are shown to a reader.
DOCS = {".smtp": "smtp.md", ".imap": "imap-pop3.md", ".pop3": "imap-pop3.md"}


@pytest.mark.parametrize(("suffix", "least"), [(".smtp", 16), (".imap", 10), (".pop3", 10)])
def test_there_are_transcripts(suffix, least):
    assert len([path for path in FILES if path.suffix == suffix]) >= least


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_transcript(path):
    expected = path.read_text()
    actual = replay(expected, path.suffix)
    if os.environ.get("TRANSCRIPTS_WRITE"):
        path.write_text(actual)
    assert actual == expected


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_docs_show_the_transcript_as_it_is(path):
    doc = (HERE.parent.parent / "docs" / DOCS[path.suffix]).read_text()
    lines = path.read_text().splitlines()
    body = "\n".join(line for line in lines if not line.startswith("#") and line.strip())
    assert f"(`{path.name}`)" in doc and "```\n" + body + "\n```" in doc
