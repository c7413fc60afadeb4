"""Datasets of whole images, real and simulated, that the image in-painter trains and is tested on."""
