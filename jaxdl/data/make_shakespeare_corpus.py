"""Builds the Shakespeare corpus shipped in jaxdl/data/shakespeare/ for language modelling.

The corpus lets the text examples and tests run with no data directory: seven tragedies in
order of composition, 1,016,477 characters (tiny-shakespeare, nanoGPT's default, is 1,115,394),
70 distinct characters. The plays are Project Gutenberg texts (public domain) with Gutenberg's
boilerplate removed, read from the copies in ../shared/data/shakespeare, joined as
`jaxdl.data.text.join_works` joins any directory of works, and compressed with bzip2.

The shipped copy was made with

  python -m jaxdl.data.make_shakespeare_corpus ../shared/data/shakespeare jaxdl/data/shakespeare

Output is byte-identical across runs (bzip2 has no timestamps or file names in its stream), so
rebuilding it leaves the repository unchanged; `jaxdl.data.text.SHIPPED_CORPUS_SHA256` is the
digest of the result.
"""

from __future__ import annotations

import argparse
import bz2
import hashlib
from pathlib import Path
import sys

from jaxdl.data import text
from jaxdl.errors import DataError

# File names (without .txt) in ../shared/data/shakespeare, in order of composition.
PLAYS = (
  "julius_caesar",
  "hamlet",
  "othello",
  "lear",
  "macbeth",
  "antony_and_cleopatra",
  "coriolanus",
)


def build_corpus(src: Path) -> bytes:
  """The compressed corpus made from the plays in `src` (bzip2 level 9 of the UTF-8 text)."""
  works = []
  for play in PLAYS:
    path = src / f"{play}.txt"
    try:
      works.append(text.decode_utf8(path.read_bytes(), str(path)))
    except OSError as e:
      raise DataError(
        f"Cannot read {str(path)!r} ({e}); pass the directory holding the "
        f"Shakespeare plays ({', '.join(PLAYS)}, each as NAME.txt)."
      ) from e
  return bz2.compress(text.join_works(works).encode("utf-8"), compresslevel=9)


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("src", type=Path, help="directory with the plays as NAME.txt")
  parser.add_argument("out", type=Path, help="directory to write the corpus to")
  args = parser.parse_args(argv)
  try:
    compressed = build_corpus(args.src)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  dest = args.out / Path(text.SHIPPED_CORPUS).name
  args.out.mkdir(parents=True, exist_ok=True)
  dest.write_bytes(compressed)
  corpus = bz2.decompress(compressed).decode("utf-8")
  print(f"{dest}: {len(compressed)} bytes, {len(corpus)} characters, {len(set(corpus))} distinct")
  print(f"SHA-256: {hashlib.sha256(compressed).hexdigest()}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
