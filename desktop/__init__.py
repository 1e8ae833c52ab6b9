"""Ember's desktop app (PySide6): chat, prompts, sampling settings and the model, on worker threads."""
