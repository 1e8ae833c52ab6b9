"""Ember's engine: model files, tokenizers, chat templates, the transformer and generation.

It never imports Qt and works headless and from the CLI (``ember-cli``).
"""
