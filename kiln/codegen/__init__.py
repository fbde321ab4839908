"""Code generators (C, Triton, HLS C++): pure functions from lowered IR to source files."""
