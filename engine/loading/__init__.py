"""From a path to a loaded model: the config, every declared size checked, the default model, the loader."""
