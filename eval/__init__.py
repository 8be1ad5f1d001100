"""Scores checkpoints: FID/KID (clean-fid), reconstruction and OOD metrics, the nightly evaluator."""
