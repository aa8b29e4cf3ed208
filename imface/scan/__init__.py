"""A user's scan: loading any mesh or point cloud (units, validation) and aligning it to the
model frame.

load   read meshes / point clouds; units; validation; decimation
align  scan frame -> model frame (automatic, 68 landmarks, 5 picked points)
"""
