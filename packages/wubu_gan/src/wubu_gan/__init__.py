"""WuBu-nesting / GAAD VAE-GAN for video with Q-learning training control."""
