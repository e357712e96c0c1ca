"""Training: recipes, losses, the training loop, distillation and run bookkeeping."""
