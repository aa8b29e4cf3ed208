"""Errors that reach users as one clear line (the CLI and the editor show ``str(error)``)."""


class UserError(Exception):
    """Bad input from the user (a file, an option): printed without a traceback."""


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded: names the file and the problem."""


class MeshError(UserError):
    """A mesh or point cloud that cannot be used: names the file and the problem."""


class AlignmentError(MeshError):
    """The automatic alignment found no face in a scan; 5 points picked by hand can replace it."""
