"""SST-2 (GLUE binary sentiment) on the generic pipeline; dev.tsv is the test set.

    python flows/sst2.py --data ../shared/data/sst2   # offline: a local copy of the GLUE files
    python flows/sst2.py                               # online: stanfordnlp/sst2 from the Hub
    python flows/sst2.py --smoke --data ../shared/data/sst2
"""

import sys

from flows.cli import main
from flows.presets import sst2

if __name__ == "__main__":
    sys.exit(main("sst2", sst2))
