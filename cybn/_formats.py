"""Format versions of the files cybn writes, and the one check that refuses a file it cannot read.

Every file carries ``format_version`` (an int). A file written before versioning has none and is
read as version 1: the layout did not change when the number was added. A reader accepts every
version from 1 to the one it writes; a newer or unknown one raises ``FormatError`` saying which
version was found and which this cybn reads (usually: the file comes from a newer cybn).
"""
KEY = "format_version"
UNVERSIONED = 1  # files from before versioning

CHECKPOINT = 1  # checkpoint.npz (cybn.checkpoint): arrays + JSON metadata + SHA-256
STATE_DICT = 1  # Sequential.save / load: one array per state_dict() entry
RUN_RECORD = 1  # run.json beside a run's config.json: what inference needs (normalisation, model)
RESULTS = 1  # an experiment's results.json


class FormatError(ValueError):
    """A file says it has a format version this cybn cannot read."""


def check_version(found, supported, what, path):
    """The version of ``path`` (a ``what`` file) as an int, if ``1 <= found <= supported``;
    ``found=None`` (written before versioning) is version 1. Raises ``FormatError`` otherwise."""
    from . import __version__

    if found is None:
        return UNVERSIONED
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise FormatError(f"{path}: {what} format version {found!r} is not a version number "
                          f"(this cybn {__version__} reads versions 1 to {supported}): the file is damaged")
    if found > supported:
        raise FormatError(f"{path}: {what} format version {found} is newer than this cybn {__version__} "
                          f"reads (versions 1 to {supported}): upgrade cybn to read it")
    return found
