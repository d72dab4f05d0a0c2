"""OneReward: one VLM judge for every mask-guided task, and RL of a FLUX.1-Fill policy against it."""

__version__ = "0.1.0"
