"""The toy language model: its synthetic world, the transformer, LM losses and sampling, the owl pipeline."""
