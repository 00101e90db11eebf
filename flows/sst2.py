"""SST-2 (GLUE binary sentiment) on the generic pipeline; dev.tsv is the test set.

    python flows/sst2.py --data ../shared/data/sst2   # offline: a local copy of the GLUE files
    python flows/sst2.py                               # online: stanfordnlp/sst2 from the Hub
    python flows/sst2.py --smoke --data ../shared/data/sst2
"""

import sys

from flows.laptop_server import start_if_wanted

if __name__ == "__main__":
    server = start_if_wanted(sys.argv[1:])  # boots while the pipeline below is imported and checked
    from flows.cli import main
    from flows.presets import sst2

    sys.exit(main("sst2", sst2, server=server))
