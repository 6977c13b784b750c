"""The MLP stack: MNIST and noise inputs, the network, imitation losses, the teacher -> students program."""
