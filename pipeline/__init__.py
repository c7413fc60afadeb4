"""lensforge stage library: one module per stage, pure functions of arrays and configuration."""
