"""Rectangular pixel regions of a tile: the unit of parallel rendering.

A tile is cut into regions that are rendered independently (on Dask workers) and pasted
back; everything drawn into a region depends only on the tile's random streams and the
region's bounds, so any cut gives the same pixels as rendering the whole tile at once.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Region:
    """Pixels ``[y0, y1) x [x0, x1)`` of a tile (0-based, numpy order, half-open)."""

    y0: int
    y1: int
    x0: int
    x1: int

    def __post_init__(self) -> None:
        if not (0 <= self.y0 < self.y1 and 0 <= self.x0 < self.x1):
            raise ValueError(f"empty or negative region {self}")

    @property
    def shape(self) -> tuple[int, int]:
        """(ny, nx) of the region [pixels]."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def slices(self) -> tuple[slice, slice]:
        """Numpy slices selecting this region from the whole tile array."""
        return slice(self.y0, self.y1), slice(self.x0, self.x1)

    def intersect(self, y0: int, y1: int, x0: int, x1: int) -> Region | None:
        """The overlap with ``[y0, y1) x [x0, x1)`` or ``None`` when they do not overlap."""
        ny0, ny1, nx0, nx1 = max(self.y0, y0), min(self.y1, y1), max(self.x0, x0), min(self.x1, x1)
        if ny0 >= ny1 or nx0 >= nx1:
            return None
        return Region(ny0, ny1, nx0, nx1)


def split_tile(shape: tuple[int, int], region_size: int) -> list[Region]:
    """Cut a ``(ny, nx)`` tile into ``region_size``² regions (the last row/column may be smaller)."""
    ny, nx = shape
    return [Region(y0, min(y0 + region_size, ny), x0, min(x0 + region_size, nx))
            for y0 in range(0, ny, region_size) for x0 in range(0, nx, region_size)]
