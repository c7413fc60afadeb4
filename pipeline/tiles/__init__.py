"""Survey tiles: plan, regions, rendering (optical and radio), detection and batch reprocessing."""
