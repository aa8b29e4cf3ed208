"""Appearance of ImFace faces: template-space colour and an image-based radiance field."""
