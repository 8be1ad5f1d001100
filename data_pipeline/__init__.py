"""Image sources, WebDataset shards at every resolution level, and streaming loaders."""

# Importable only as sivae.data_pipeline: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.data_pipeline":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.data_pipeline)", name=__name__)

