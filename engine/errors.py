"""Errors a person can cause and fix.

Each carries one sentence that is safe to show in a chat or on a terminal: it says what
went wrong and what to do. Anything that is not a `UserError` is our bug, and the edges
(CLI, bots) turn it into a generic apology while the log keeps the traceback.
"""


class UserError(Exception):
    """Something the teacher or the operator can fix; `str()` is the sentence to show."""


class SettingsError(UserError):
    """A setting is missing, malformed or out of range; start-up stops."""


class RequestError(UserError):
    """A teacher's request cannot be turned into a storyboard as written."""


class StoryboardError(UserError):
    """A storyboard breaks a limit (too long, too many scenes…)."""


class RenderError(UserError):
    """A render cannot run as asked (an output folder that cannot be written, a missing image)."""
