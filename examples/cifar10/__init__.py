"""CIFAR-10 training example: the paper's protocol, data parallel, checkpointed and resumable."""
