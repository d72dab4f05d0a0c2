"""OneReward RL: reward feedback learning of the FLUX.1-Fill policy against the VLM judge."""
