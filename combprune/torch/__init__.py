"""Torch adapter: map network layers to combprune problem instances and prune models."""
