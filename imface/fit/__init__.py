"""Scan -> codes (ImFace Eq. 17).

codes  alignment, preprocessing and code optimisation with restarts, progress and cancellation
"""
