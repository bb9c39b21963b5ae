"""unittest glue (harness.unit): a group shared by a test class, and the
stop-and-check every test that ends a group by hand uses."""
import unittest

from harness.group import Group


def slots_of(group, user=None):
    """The registry's connections (tether-dump --json), of user if given."""
    conns = group.dump()["connections"]
    return [c for c in conns if user is None or c["user_id"] == user]


def stop_and_check(testcase, group, expect_exit=0):
    """Stop the group; fail testcase on a sanitizer report or an exit status
    other than expect_exit."""
    try:
        group.finish(expect_exit)
    except AssertionError as e:
        testcase.fail(str(e))


class GroupTestCase(unittest.TestCase):
    """One group for the whole class (GROUP_ARGS: Group keyword arguments);
    stopped and checked (exit 0, no sanitizer report) at the end."""
    GROUP_ARGS = {"workers": 2}

    @classmethod
    def setUpClass(cls):
        cls.g = Group(**cls.GROUP_ARGS).start()

    @classmethod
    def tearDownClass(cls):
        cls.g.finish(0)
