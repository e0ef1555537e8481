"""Input pipelines; they know nothing of models."""
