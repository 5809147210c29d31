"""Pure tensor functions. They know nothing of models, requests or files."""
