"""Writers for target lists, rasters, maps and run reports (results go wherever --out points)."""
