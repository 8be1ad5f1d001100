"""Entry points: the `sivae` command, distributed backends' launchers and Slurm jobs."""

# Importable only as sivae.launch: a second copy under the folder's name (from the repository root) would
# hold its own classes and registries.
if __name__ != "sivae.launch":
    raise ModuleNotFoundError(f"No module named {__name__!r} (the package is sivae.launch)", name=__name__)

