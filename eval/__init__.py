"""Scores checkpoints: FID/KID (clean-fid), reconstruction and OOD metrics, the nightly evaluator."""

# Importable only as sivae.eval: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.eval":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.eval)", name=__name__)

