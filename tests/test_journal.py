"""The journal that lets a long reproduction resume where it was interrupted."""

import json

from netshrink.experiments.runtime import Journal, source_digest


def test_rows_survive_a_new_journal_with_the_same_fingerprint(tmp_path):
    path = tmp_path / ".out.rows.jsonl"
    first = Journal(path, {"keeps": [0.9, 0.5], "seed": 0})
    assert first.rows == []
    first.append({"keep": 0.9, "cosine": 0.99})
    first.append({"keep": 0.5, "cosine": float("nan")})  # non-finite numbers become null
    again = Journal(path, {"seed": 0, "keeps": [0.9, 0.5]})  # key order does not matter
    assert again.rows == [{"keep": 0.9, "cosine": 0.99}, {"keep": 0.5, "cosine": None}]
    again.remove()
    assert not path.exists()


def test_another_fingerprint_starts_over(tmp_path):
    path = tmp_path / "journal.jsonl"
    Journal(path, {"seed": 0}).append({"keep": 0.9})
    other = Journal(path, {"seed": 1})
    assert other.rows == []
    assert path.read_text().splitlines() == [json.dumps({"seed": 1})]


def test_a_line_cut_short_by_a_kill_is_dropped(tmp_path):
    path = tmp_path / "journal.jsonl"
    journal = Journal(path, {"seed": 0})
    journal.append({"keep": 0.9})
    with open(path, "a") as handle:
        handle.write('{"keep": 0.')
    resumed = Journal(path, {"seed": 0})
    assert resumed.rows == [{"keep": 0.9}]
    resumed.append({"keep": 0.8})
    assert Journal(path, {"seed": 0}).rows == [{"keep": 0.9}, {"keep": 0.8}]


def test_unreadable_journal_starts_over(tmp_path):
    path = tmp_path / "journal.jsonl"
    path.write_bytes(b"\xff\xfe not text")
    assert Journal(path, {"seed": 0}).rows == []


def test_source_digest_is_a_stable_sha256():
    digest = source_digest()
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert source_digest() == digest
