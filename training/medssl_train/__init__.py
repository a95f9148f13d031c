"""medssl training: self-supervised pre-training recipes and fine-tuning (recipes land per seed method)."""
