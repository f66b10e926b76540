"""Offline demo: synthetic GSM8K-format word problems and a tiny char-level Llama trained on them."""
