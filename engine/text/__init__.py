"""The text layer: tokenizers (HF and GGUF vocabularies, guarded), detokenizing, chat templates, stop strings."""
