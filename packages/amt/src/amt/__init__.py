"""Advanced Manipulation Transformer: 3D hand pose from RGB with pixel-aligned refinement and sigma-reparam."""
