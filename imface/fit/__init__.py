"""Scan -> codes (ImFace Eq. 17) -> the person's detail.

codes    code optimisation of SDF samples, restarts as one batch (a job: one record an iteration)
scan     a whole scan as a job: align, sample, fit with restarts, extract, detail stage
samples  pose-independent samples of a scan in the model frame
refine   the detail stage and its DetailMap (offsets in template space)
"""
