"""Shared by every package: config loading and validation, crash-safe file writes, processes and
collectives, and the on-disk formats (run directory, checkpoints, snapshots) that packages exchange."""

# Importable only as sivae.core: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.core":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.core)", name=__name__)

