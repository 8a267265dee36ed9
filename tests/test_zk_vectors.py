"""docs/zk-test-vectors.md is what the code produces today (so another implementation checking itself against
the page checks itself against this one)."""

import json
from pathlib import Path

from worker.zk import vectors

DOC = Path(__file__).resolve().parents[1] / "docs" / "zk-test-vectors.md"


def test_published_vectors_match_the_code():
    text = DOC.read_text()
    published = json.loads(text.split("```json\n", 1)[1].split("\n```", 1)[0])
    now = vectors.compute()
    assert published == json.loads(json.dumps(now))
    assert all(p["verifies"] for p in now["proofs"])
    assert text == vectors.markdown(now)
