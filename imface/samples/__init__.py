"""From aligned scans to training samples (ImFace section 3.5) and back out of the cache.

preprocess  crop, hidden surfaces, Delaunay sheet, SDF samples
prepare     parallel, resumable cache writer
cache       the cache layout and its reader (``Corpus``)
dataset     SDFDataset (torch) for training
cli         ``imface prepare``
"""
