"""Emotion (dair-ai/emotion, 6 classes of English tweets) on the generic pipeline.

    python flows/emotion.py --data ../shared/data/emotion   # offline: a local copy
    python flows/emotion.py                                  # online: from the Hub
    python flows/emotion.py --smoke --data ../shared/data/emotion
"""

import sys

from flows.laptop_server import start_if_wanted

if __name__ == "__main__":
    server = start_if_wanted(sys.argv[1:])  # boots while the pipeline below is imported and checked
    from flows.cli import main
    from flows.presets import emotion

    sys.exit(main("emotion", emotion, server=server))
