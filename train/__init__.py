"""Objectives, training steps, the trainer and the 2D toy study."""

# Importable only as sivae.train: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.train":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.train)", name=__name__)

