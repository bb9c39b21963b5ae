"""The one sanitizer check of the test tree.

Every process of a group the harness starts (supervisor, workers, janitor,
notifier) writes to the group's captured stdout/stderr, and so does every
sanitizer runtime: AddressSanitizer, LeakSanitizer (which the roles run
before they exit, see tools' proc spawning), UndefinedBehaviorSanitizer
("runtime error:") and ThreadSanitizer. A report from any of them fails the
suite, whether or not it changed what the test saw.
"""

# The first line of each runtime's report. "runtime error:" is UBSan's
# (its summary line names UndefinedBehaviorSanitizer only with
# print_summary, so the per-report phrase is what is looked for).
MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "WARNING: ThreadSanitizer",
         "ThreadSanitizer:", "runtime error:", "AddressSanitizer:", "LeakSanitizer:")


class SanitizerReport(AssertionError):
    """A sanitizer runtime reported an error in a process the test started."""


def reports(text):
    """The lines of text that start a sanitizer report (empty when clean)."""
    return [line for line in text.splitlines() if any(m in line for m in MARKS)]


def check(text, what="the group's log"):
    """Raise SanitizerReport if text holds a sanitizer report."""
    found = reports(text)
    if found:
        # Show the report itself: from a little before the first marker on.
        at = text.find(found[0])
        raise SanitizerReport("sanitizer report in %s (%d marker lines, first: %r):\n%s"
                              % (what, len(found), found[0], text[max(0, at - 200):at + 6000]))
