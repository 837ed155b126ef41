import os

import pytest

from netshrink.atomic import atomic_directory, atomic_write_bytes, atomic_write_text
from netshrink.errors import InvalidInputError, OutputExistsError


def leftovers(folder, keep):
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_write_bytes_and_text(tmp_path):
    assert atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01") == tmp_path / "a.bin"
    atomic_write_text(tmp_path / "b.txt", "héllo\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert leftovers(tmp_path, {"a.bin", "b.txt"}) == []


def test_written_file_has_umask_permissions(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "a.bin").stat().st_mode & 0o777 == 0o666 & ~mask


def test_refuses_to_overwrite_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert leftovers(tmp_path, {"a.txt"}) == []


def test_overwrite_replaces_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_text("old")
    atomic_write_text(target, "new", overwrite=True)
    assert target.read_text() == "new"
    assert leftovers(tmp_path, {"a.txt"}) == []


def test_missing_parent_and_directory_target(tmp_path):
    with pytest.raises(InvalidInputError, match="does not exist"):
        atomic_write_bytes(tmp_path / "no" / "a.bin", b"")
    (tmp_path / "d").mkdir()
    with pytest.raises(InvalidInputError, match="folder"):
        atomic_write_bytes(tmp_path / "d", b"", overwrite=True)


def test_failed_write_leaves_nothing(tmp_path):
    class Boom:  # not bytes: the write itself fails after the temp file exists
        pass

    with pytest.raises(TypeError):
        atomic_write_bytes(tmp_path / "a.bin", Boom())
    assert list(tmp_path.iterdir()) == []


def test_directory_success(tmp_path):
    target = tmp_path / "out"
    with atomic_directory(target) as tmp:
        assert tmp.is_dir() and tmp.parent == tmp_path and tmp != target
        assert not target.exists()
        (tmp / "x.txt").write_text("1")
        (tmp / "sub").mkdir()
    assert (target / "x.txt").read_text() == "1" and (target / "sub").is_dir()
    assert leftovers(tmp_path, {"out"}) == []


def test_directory_exception_leaves_nothing(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError, match="half way"):
        with atomic_directory(target) as tmp:
            (tmp / "partial.txt").write_text("1")
            raise RuntimeError("half way")
    assert list(tmp_path.iterdir()) == []


def test_directory_refuses_existing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="out"):
        with atomic_directory(target):
            pytest.fail("the block must not run")  # pragma: no cover
    assert (target / "keep.txt").read_text() == "old"
    assert leftovers(tmp_path, {"out"}) == []


def test_directory_refuses_path_appearing_meanwhile(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(OutputExistsError):
        with atomic_directory(target) as tmp:
            (tmp / "new.txt").write_text("new")
            target.mkdir()
            (target / "other.txt").write_text("other")
    assert sorted(p.name for p in target.iterdir()) == ["other.txt"]
    assert leftovers(tmp_path, {"out"}) == []


@pytest.mark.parametrize("existing", ["folder", "file"])
def test_directory_overwrite_replaces(tmp_path, existing):
    target = tmp_path / "out"
    if existing == "folder":
        target.mkdir()
        (target / "old.txt").write_text("old")
    else:
        target.write_text("old")
    with atomic_directory(target, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert leftovers(tmp_path, {"out"}) == []


def test_directory_overwrite_failure_keeps_old(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(KeyError):
        with atomic_directory(target, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyError("fail")
    assert sorted(p.name for p in target.iterdir()) == ["old.txt"]
    assert leftovers(tmp_path, {"out"}) == []
