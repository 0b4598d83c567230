"""Sharded, resumable sample generation on one process or many (``torchrun``, torch.distributed)."""
