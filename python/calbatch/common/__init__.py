"""What every stage shares: MPI helpers, YAML configuration, atomic file writes."""
