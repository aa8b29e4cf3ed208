"""Auto-decoder training.

losses          the network + code tables (AutoDecoder) and every training loss
correspondence  registered points -> the person's neutral and the template (direct warp losses)
training_set    the training scans, the held-out split, code bookkeeping, reproducible batches
trainer         the training loop as a job, exact resume, torchrun / DDP, checkpoints, logs
rundir          the run folder's files
"""
