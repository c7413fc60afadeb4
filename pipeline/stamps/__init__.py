"""Postage stamps: galaxy models, populations, lensing, survey PSFs, defects, ring pairs, the simulate stage."""
