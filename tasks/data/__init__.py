"""Data: reading a labelled data set from its source, phrase trees, text to ids, and batches."""
