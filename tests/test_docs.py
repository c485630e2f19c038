"""The documentation cites only what a reader has: no pointers into files outside the repository."""

import glob
import os

from conftest import ROOT


def test_no_citations_of_a_references_file_the_repository_lacks():
  files = [os.path.join(ROOT, "README.md")] + glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                                         recursive=True) \
      + glob.glob(os.path.join(ROOT, "restorejax", "**", "*.py"), recursive=True)
  if os.path.exists(os.path.join(ROOT, "REFERENCES.md")):
    return  # the file came into the repository: citing it is fine
  cited = [os.path.relpath(f, ROOT) for f in files if "REFERENCES" in open(f, encoding="utf-8").read()]
  assert cited == []
