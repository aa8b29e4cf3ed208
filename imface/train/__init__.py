"""Auto-decoder training.

losses   the network + code tables (AutoDecoder) and every training loss
trainer  the training loop, exact resume, torchrun / DDP, checkpoints, logs
"""
