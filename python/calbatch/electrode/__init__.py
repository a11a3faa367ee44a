"""The electrode as data: voxel volumes, series and packs on disk, voxelization, the press schedule
and the structural metrics (fractions, porosity, contact areas)."""
