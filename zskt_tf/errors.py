"""The one exception type that means "the user asked for something wrong"."""


class UserError(ValueError):
    """A mistake in the user's input, reported as one line without a traceback.

    Subclasses ValueError so that library callers can catch it the usual way; the
    command-line programs print its message and exit with status 2.
    """
