"""Soft-IntroVAE at scale. The packages: `sivae.core` (config, file I/O, processes, on-disk formats),
`sivae.data_pipeline`, `sivae.models`, `sivae.train`, `sivae.launch` and `sivae.eval`."""

__version__ = "0.1.0"
