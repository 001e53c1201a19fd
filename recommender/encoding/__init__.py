"""From images to vectors, with no database: backbones and their weights, the EfficientNet-Lite port,
the checkpoint reader, preprocessing and the embedder."""
