"""Reading weights from model files and renaming them to the engine's own names."""
