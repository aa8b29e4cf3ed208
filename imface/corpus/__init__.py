"""Where scans come from: the synthetic Anny corpus and FaceScape TU folders.

anny_head       Anny head model wrapper: identities, expressions, model-frame axes
anny_landmarks  derivation of the 68 landmark vertices on the Anny topology (run once)
detail          procedural wrinkles, folds and skin relief (synthetic)
synth           the FaceScape-like synthetic corpus
facescape       find scans in a synthetic, FaceScape TU or plain folder
cli             ``imface synth``
"""
