"""Action-conditioned video world model for driving: encoder, latent dynamics, decoder, open-loop rollout."""
