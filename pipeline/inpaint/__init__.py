"""In-painting: methods by name (model, biharmonic, interpolate), a store's in-painting stage, whole images."""
