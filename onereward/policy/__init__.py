"""The FLUX.1-Fill policy: tiny model built in code, adapter for RL, true-CFG inference."""
