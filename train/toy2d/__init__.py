"""The 2D toy study of the Soft-IntroVAE paper: four densities, three objectives."""
