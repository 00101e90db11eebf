"""Emotion (dair-ai/emotion, 6 classes of English tweets) on the generic pipeline.

    python flows/emotion.py --data ../shared/data/emotion   # offline: a local copy
    python flows/emotion.py                                  # online: from the Hub
    python flows/emotion.py --smoke --data ../shared/data/emotion
"""

import sys

from flows.cli import main
from flows.presets import emotion

if __name__ == "__main__":
    sys.exit(main("emotion", emotion))
