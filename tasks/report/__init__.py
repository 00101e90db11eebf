"""The run report's helpers: markdown tables and sections, and plots."""
