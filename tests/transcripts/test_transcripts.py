"""Every *.smtp transcript here, replayed through SmtpProxy (see runner.py).

SMTP_TRANSCRIPTS_WRITE=1 rewrites the files from what the proxy does: review the
diff before committing it.
"""

import os
from pathlib import Path

import pytest

from .runner import replay

HERE = Path(__file__).parent
FILES = sorted(HERE.glob("*.smtp"))


def test_there_are_transcripts():
    assert len(FILES) >= 16


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_transcript(path):
    expected = path.read_text()
    actual = replay(expected)
    if os.environ.get("SMTP_TRANSCRIPTS_WRITE"):
        path.write_text(actual)
    assert actual == expected


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_docs_show_the_transcript_as_it_is(path):
    doc = (HERE.parent.parent / "docs" / "smtp.md").read_text()
    lines = path.read_text().splitlines()
    body = "\n".join(line for line in lines if not line.startswith("#") and line.strip())
    assert f"(`{path.name}`)" in doc and "```\n" + body + "\n```" in doc
