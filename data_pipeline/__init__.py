"""Image sources, WebDataset shards at every resolution level, and streaming loaders."""
