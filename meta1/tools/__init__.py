"""Developer tools: spec generation."""
