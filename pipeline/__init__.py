"""poppyscan pipeline: ingest, masks, grid, orchestration and errors."""
