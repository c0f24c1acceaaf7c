"""The shared model/training core: building blocks, the Trainer, ICL transformers."""
