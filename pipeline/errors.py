"""The one error type users see: a single line saying what is wrong and how to fix it."""


class TailorfitError(Exception):
    """A problem with the user's input or environment.

    The CLI prints ``str(error)`` as one line and exits non-zero, without a traceback
    unless ``--debug``; ``fix`` is appended as the "how to fix it" half of that line.
    """

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} — {fix}" if fix else problem)


class StepSkipped(Exception):
    """A step has nothing to produce (say, no searched candidate meets a selection rule).

    The runner records the reason, skips the steps that need its output, and lets list inputs
    (``package``) go on with the branches that exist: the run packages nothing rather than
    something that breaks the rule.
    """
