"""The generative model's stages: training on a run's store, and generation lensed and observed by GalSim."""
