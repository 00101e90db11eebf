"""Models: where pretrained models come from (packaged, tiny, local, Hub), and whether two tokenizers align."""
