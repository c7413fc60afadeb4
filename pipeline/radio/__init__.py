"""Radio interferometry: antenna layouts, uv coverage, the synthesized beam, dirty images and CLEAN."""
