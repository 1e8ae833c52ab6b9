"""Generation: the samplers and their settings (torch-free), and the streaming loop over the KV cache."""
