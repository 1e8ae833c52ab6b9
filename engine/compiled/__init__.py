"""Compiled decoding: the one-token step exported and compiled with AOTInductor, and its cache of built libraries."""
