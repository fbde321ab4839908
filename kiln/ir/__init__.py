"""kiln's IR: types, the SSA graph, op definitions, text format, verifier and interpreter."""
