"""Gene features: text and DNA language-model embeddings, cached by content."""
