"""Data: synthetic Anny corpus, scan loading, alignment, ImFace preprocessing, cached datasets.

anny_head      Anny head model wrapper: identities, expressions, model-frame axes
anny_landmarks derivation of the 68 landmark vertices on the Anny topology (run once)
detail         procedural wrinkles, folds and skin relief (synthetic)
synth          ``imface synth``: the FaceScape-like synthetic corpus
scans          load any mesh / point cloud; units; validation; decimation
facescape      find scans in a synthetic, FaceScape TU or plain folder
align          scan frame -> model frame (automatic, 68 landmarks, 5 picked points)
preprocess     crop, hidden surfaces, Delaunay sheet, SDF samples
prepare_cli    ``imface prepare``: parallel, resumable cache writer
corpus         the cache layout and the Corpus reader
dataset        SDFDataset (torch) for training
"""
