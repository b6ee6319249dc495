"""Tests of the example services (examples/), as real processes."""
