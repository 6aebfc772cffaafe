"""DDPM Studio: train a denoising diffusion probabilistic model on your own images and watch it work."""

__version__ = "0.1.0"
