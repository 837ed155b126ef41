"""Real English text: the quotations of Debian's ``fortunes`` package.

Each fortune file holds entries separated by lines with a single ``%``. Entries are
cleaned (terminal overstrike removed, whitespace collapsed), kept when they read as
prose (mostly letters, 20 to 600 characters; the ``ascii-art`` file is left out),
de-duplicated and shuffled with a fixed seed, so the same install gives the same
texts everywhere. Nothing is downloaded.
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

from ..errors import DatasetNotFoundError

#: Where Debian installs the fortune files (``NETSHRINK_FORTUNES`` to change).
FORTUNES = Path("/usr/share/games/fortunes")
_NOT_PROSE = {"ascii-art"}
_OVERSTRIKE = re.compile(r".\x08")


def fortunes(seed: int = 0, root: str | os.PathLike | None = None) -> list[str]:
    """Every usable fortune as one string, shuffled with ``seed``.

    Raises:
        DatasetNotFoundError: the fortune files are not installed.
    """
    folder = Path(root or os.environ.get("NETSHRINK_FORTUNES", FORTUNES))
    files = sorted(p for p in folder.glob("*") if p.is_file() and not p.suffix and p.name not in _NOT_PROSE) \
        if folder.is_dir() else []
    if not files:
        raise DatasetNotFoundError(
            f"no fortune files in {folder}. Install Debian's English quotations with "
            "`sudo apt-get install fortunes`, or point NETSHRINK_FORTUNES at a folder of fortune files"
        )
    texts = []
    for path in files:
        utf8 = path.with_name(path.name + ".u8")
        raw = (utf8 if utf8.is_file() else path).read_bytes().decode("utf-8", errors="replace")
        for entry in re.split(r"^%\s*$", raw, flags=re.MULTILINE):
            text = " ".join(_OVERSTRIKE.sub("", entry).split())
            if _is_prose(text):
                texts.append(text)
    texts = sorted(set(texts))
    random.Random(seed).shuffle(texts)
    return texts


def _is_prose(text: str) -> bool:
    if not 20 <= len(text) <= 600:
        return False
    letters = sum(c.isalpha() or c == " " for c in text)
    return letters >= 0.8 * len(text)
