"""One module per tab of the studio; each has `build(...)` that adds its components and events to the Blocks."""
