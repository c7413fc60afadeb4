"""lensforge products: training-set schema, Zarr store, truth catalogue, manifest, shared errors."""
