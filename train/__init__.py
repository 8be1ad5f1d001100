"""Objectives, training steps, the trainer and the 2D toy study."""
