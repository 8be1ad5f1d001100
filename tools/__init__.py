"""Tools that make images with a saved model: generate, reconstruct (and refine), interpolate, mix, encode."""

# Importable only as sivae.tools: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.tools":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.tools)", name=__name__)
