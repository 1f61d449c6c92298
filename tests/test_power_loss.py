"""Power cuts at many points of a real broker's life (tests/powerloss.py explains the harness):
for every storage.fsync mode, recovery never fails and nothing is invented, duplicated or
reordered; with always and batch (the default) no confirmed message is lost and acks covered
by a later confirm stay acked. A short run here; bench/power_loss.py runs hundreds of cuts."""
import pytest

from . import powerloss

CUTS, ROUNDS = 24, 45


@pytest.mark.parametrize("mode", ["always", "batch", "never"])
def test_power_cuts(mode):
    r = powerloss.run(mode, cuts=CUTS, rounds=ROUNDS, restarts=1, seed=11)
    assert r.cuts >= CUTS - 1 and r.publishes > 100
    assert not r.recovery_errors, r.recovery_errors[:3]
    assert not r.failures, r.failures[:3]
    if mode != "never":
        assert r.lost == 0


class WithoutDirectorySyncs(powerloss.RecordingIO):
    """A planted bug: directories are never fsynced (as the store did before this harness)."""

    def fsync_dir(self, path):
        pass


def test_the_harness_catches_a_missing_directory_fsync():
    r = powerloss.run("batch", cuts=CUTS, rounds=ROUNDS, restarts=0, seed=5,
                      io_class=WithoutDirectorySyncs)
    assert r.lost > 0 and r.failures
