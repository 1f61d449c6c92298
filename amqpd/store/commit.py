"""The one commit path: when may a confirm go out?

Records appended to the queue logs are buffered; once per event-loop turn the edge calls
``write_pending()``, which hands them to the OS as one write batch, numbered (a generation).
A publish confirm waits for its generation to be durable. How that happens is the fsync mode:

- ``batch`` (default): ``begin_sync()`` hands out a job covering every generation written so
  far; the edge runs ``sync(job)`` on an fsync worker thread, then ``finish(job, error)``.
  Writes made while an fsync runs are covered by the next one (group commit), which may start
  before the running one ends: a write made just after an fsync began then waits for one fsync,
  not for one and a half (measured on this VM's disk: two in flight halve the mean latency from
  write to durable). Jobs complete in the order they were handed out (``finish`` holds one that
  ends early): a generation is durable only when every job up to the one covering it is done,
  since an earlier job may hold files or directories the later one does not.
- ``always``: the same job, run on the loop thread before the next turn (``inline``), so no
  confirm is ever held for more than one fsync: the slowest mode, the user's explicit choice.
- ``never``: a generation counts as durable once written (the OS decides when it reaches the
  disk; a power cut loses what it had not flushed).

A deleted queue's directory is renamed out of the way at once and removed by the next job, off
the loop (``discard_later``). ``journal_written`` lets a writer whose reply must wait for the
next durable generation say so (the definitions journal fsyncs itself today: see storage.md).

Waiters (channels with confirms outstanding, connections with held output) register with
``wait()`` and are called back: ``flush_confirms()`` when generations become durable,
``nack_generations(lo, hi)`` when a write or an fsync fails (generations lo < gen <= hi): those
publishes are nacked, never confirmed. Sans-IO as far as scheduling goes: the edge decides
where ``sync`` runs (its fsync threads; the loop thread for ``always``)."""
import logging
from collections import deque

log = logging.getLogger("amqpd.store")

# Writes count as working again (and the next failure is logged again) only after this many
# successful commits in a row: a failing device often fails some writes and not others.
RECOVERED_AFTER = 20
MODES = ("batch", "always", "never")


class SyncJob:
    """One fsync round: every write up to generation ``gen``; then the directories of deleted
    queues (``trash``) are removed."""
    __slots__ = ("gen", "fds", "dirs", "logs", "trash", "done", "error")

    def __init__(self, gen: int, fds: list, dirs: list, logs: list, trash: list = ()):
        self.gen, self.fds, self.dirs, self.logs = gen, fds, dirs, logs
        self.trash = list(trash)
        self.done = False
        self.error = None


class Commit:
    def __init__(self, data_dir: str, fsync: str, io):
        self.data_dir = data_dir
        self.mode = fsync
        self.inline = fsync == "always"
        self.io = io
        self.dirty: dict = {}          # logs with buffered records
        self.unsynced: dict = {}       # logs written to the OS since the last fsync
        self.gen = 0                   # write batches handed to the OS so far
        self.synced_gen = 0            # write batches known to be on disk (or nacked)
        self.started_gen = 0           # write batches a job handed out covers
        self.jobs: deque = deque()     # jobs handed out and not yet reported, in order
        self.written = 0               # bytes handed to the OS (the disk alarm estimates)
        self.waiters: dict = {}        # channels with confirms waiting (an ordered set)
        self.journal = None            # the definitions journal (store.py sets it)
        self.journal_gen = 0           # the generation the last journal line belongs to
        self.dirs: dict = {}           # directories whose entries changed (to fsync)
        self.trash: list = []          # directories of deleted queues, to remove
        self.on_dirty = None           # set by the I/O edge: schedule a commit this turn
        self.failing = None            # the error while writes fail (logged once)
        self.failures = 0              # failed writes/fsyncs since it started failing
        self.failed_gen = 0            # the last generation that failed
        self.good_run = 0              # successful commits since the last failure
        self.written_hooks: list = []  # called once after the next write (paged queues)

    # -- appends ------------------------------------------------------------------------------
    def mark_dirty(self, qlog) -> None:
        """``qlog`` buffered a record: it is written out at the end of this turn."""
        if not self.dirty and self.on_dirty is not None:
            self.on_dirty()
        self.dirty[qlog] = None

    def journal_written(self) -> int:
        """A definitions journal line was written: it is durable with the next generation,
        which is returned (the caller's reply waits for it)."""
        self._touch()
        self.journal_gen = self.gen + 1
        return self.journal_gen

    def discard_later(self, path: str, parent: str) -> None:
        """``path`` (a deleted queue's directory, renamed away from its name) is removed by
        the next job, after ``parent``'s entries are made durable."""
        self._touch()
        self.trash.append(path)
        self.dirs[parent] = None

    def _touch(self) -> None:
        if not self.extra and self.on_dirty is not None:
            self.on_dirty()
        self.extra = True

    extra = False                      # journal lines, directories or trash are waiting

    def forget(self, qlog) -> None:
        """A deleted log has nothing left to write or sync."""
        self.dirty.pop(qlog, None)
        self.unsynced.pop(qlog, None)

    @property
    def next_gen(self) -> int:
        """The write batch a record buffered now belongs to."""
        return self.gen + 1

    def after_write(self, callback) -> None:
        """Call ``callback()`` once the records buffered now have been handed to the OS (a
        paged queue reads them back from there)."""
        self.written_hooks.append(callback)
        if not self.dirty and not self.extra and self.on_dirty is not None:
            self.on_dirty()

    def wait(self, waiter) -> None:
        """Call ``waiter.flush_confirms()`` when the next sync completes (or
        ``nack_generations`` if it fails)."""
        self.waiters[waiter] = None

    # -- one turn -----------------------------------------------------------------------------
    def write_pending(self) -> bool:
        """Hand every buffered record to the OS (once per loop turn). True if anything was.
        A log whose write fails drops what it buffered (see QueueLog.write): the publishes of
        this generation are reported as failed, the others carry on."""
        if not self.dirty and not self.extra:
            return False
        self.extra = False
        logs = list(self.dirty)
        self.dirty.clear()
        gen = self.gen + 1
        error = None
        for qlog in logs:
            before = qlog.written
            if qlog.scratch:
                self._write_scratch(qlog)
                continue
            try:
                if qlog.write():
                    self.unsynced[qlog] = None
            except OSError as exc:
                self.unsynced[qlog] = None        # earlier writes and retired segments
                error = error or exc
            self.written += qlog.written - before
        self.gen = gen
        if error is not None:
            self._failed(gen - 1, gen, f"cannot write to {self.data_dir}", error)
        if self.written_hooks:
            hooks, self.written_hooks = self.written_hooks, []
            for hook in hooks:
                hook()
        if self.mode == "never":
            for qlog in self.unsynced:
                qlog.release_retired()
            self.unsynced.clear()
            self.synced_gen = gen
            if error is None:
                self._writes_succeed(gen)
            self._notify()
        return True

    def _write_scratch(self, qlog) -> None:
        """Transient messages paged out: written, never fsynced, and nobody waits for them. A
        failed write loses them (the queue skips what it cannot read back)."""
        before = qlog.written
        try:
            qlog.write()
        except OSError as exc:
            log.warning("%s: cannot write transient messages paged out of memory: %s",
                        qlog.path, exc)
        qlog.release_retired()
        self.written += qlog.written - before

    def begin_sync(self) -> SyncJob | None:
        """What to fsync for everything written so far, and the generation it covers; None
        if nothing is waiting."""
        if self.mode == "never" or self.started_gen >= self.gen:
            if not self.trash or self.jobs:
                return None
            trash, self.trash = self.trash, []
            self.dirs.clear()
            return SyncJob(self.gen, [], [], [], trash)
        if self.jobs and self._summaries_waiting():
            return None                        # after the running job (see _summaries_waiting)
        trash, self.trash = self.trash, []
        self.started_gen = self.gen
        fds, dirs = [], list(self.dirs)
        self.dirs.clear()
        logs = list(self.unsynced)
        self.unsynced.clear()
        for qlog in logs:
            f, d = qlog.sync_targets()
            fds += f
            dirs += d
        if self.journal is not None:
            fd = self.journal.sync_target()
            if fd is not None:
                fds.append(fd)
        if not (fds or dirs or trash or logs or self.jobs):
            # Nothing to make durable (only transient messages paged out were written, or a
            # log was deleted meanwhile) and no job runs: no round trip to an fsync thread.
            self.synced_gen = self.gen
            self._writes_succeed(self.gen)
            self._notify()
            return None
        job = SyncJob(self.gen, fds, dirs, logs, trash)
        self.jobs.append(job)
        return job

    def _summaries_waiting(self) -> bool:
        """Does a log to sync have segment summaries waiting for this fsync? A log writes the
        summaries its last jobs took when one of them completes (``index_synced``), so a job
        that takes some must not run beside an earlier one: the earlier one could complete
        first and write a summary of a segment not yet durable. (Rare: once per segment.)"""
        for qlog in self.unsynced:
            if getattr(qlog, "unsynced_index", None) or getattr(qlog, "retired", None):
                return True
        return False

    def sync(self, job: SyncJob) -> None:
        """Runs on an fsync worker thread (or inline). Files first, then the directories that
        name new ones. Every descriptor is closed; the first error is raised."""
        io = self.io
        error = None
        for fd in job.fds:
            try:
                if error is None:
                    io.fsync(fd)
            except OSError as exc:
                error = exc
            finally:
                io.close(fd)
        for path in dict.fromkeys(job.dirs):
            if error is None:
                try:
                    io.fsync_dir(path)
                except FileNotFoundError:
                    pass                           # the queue was deleted meanwhile
                except OSError as exc:
                    error = exc
        if error is not None:
            raise error
        for path in job.trash:       # only once the rename is durable
            try:
                io.rmtree(path)
            except OSError as exc:   # the name is free already; the next start removes it
                log.warning("cannot remove %s: %s", path, exc)

    def finish(self, job: SyncJob, error: OSError | None = None) -> None:
        """The edge reports how ``sync(job)`` went; waiters hear about it once every job
        handed out before it has been reported too."""
        job.done, job.error = True, error
        jobs = self.jobs
        if job not in jobs:
            self._finish(job)
        elif jobs[0] is not job:
            return                              # an earlier job still runs
        while jobs and jobs[0].done:
            self._finish(jobs.popleft())
        self._notify()

    def _finish(self, job: SyncJob) -> None:
        if job.error is None:
            self.synced(job)
        else:
            self.sync_failed(job, job.error)

    def run_inline(self) -> None:
        """``always``: fsync what this turn wrote, on the loop thread."""
        job = self.begin_sync()
        if job is not None:
            try:
                self.sync(job)
            except OSError as exc:
                self.finish(job, exc)
                return
            self.finish(job)
        else:
            self._notify()

    @property
    def behind(self) -> bool:
        """Written but no job handed out for it yet: another fsync round is due."""
        return self.gen > self.started_gen or bool(self.trash)

    def synced(self, job: SyncJob) -> None:
        self._forget_job(job)
        self.synced_gen = max(self.synced_gen, job.gen)
        for qlog in job.logs:
            qlog.index_synced()         # summaries of the segments it finished
        self._writes_succeed(job.gen)

    def sync_failed(self, job: SyncJob, exc: OSError) -> None:
        """The fsync did not complete: nothing it covered may be confirmed. Worse, Linux
        reports a failed writeback once and then forgets it (PostgreSQL's "fsyncgate"): a
        later fsync of the same file succeeds although pages written before the failure are
        gone. So every generation handed to the OS so far is nacked, and the one being
        buffered too (records already framed for the old segments go there), every log the
        fsync covered moves to a fresh segment, and the broker carries on."""
        self._forget_job(job)
        self._failed(self.synced_gen, self.gen + 1, f"fsync in {self.data_dir} failed", exc)
        for qlog in job.logs:
            qlog.index_failed()
            if not qlog.deleted:
                qlog.abandon_segment()
                qlog.dir_dirty = True          # the names may not be durable either
                self.mark_dirty(qlog)
        if self.journal is not None:
            self.journal.suspect = True        # rewritten whole before its next line
        self.trash.extend(job.trash)
        self.dirs.update(dict.fromkeys(job.dirs))
        self.synced_gen = max(self.synced_gen, self.gen)

    def _forget_job(self, job: SyncJob) -> None:
        if self.jobs and job in self.jobs:
            self.jobs.remove(job)

    def _notify(self) -> None:
        waiters = list(self.waiters)
        self.waiters.clear()
        for waiter in waiters:
            waiter.flush_confirms()

    def _failed(self, lo: int, hi: int, what: str, exc: OSError) -> None:
        self.failures += 1
        self.failed_gen = hi
        self.good_run = 0
        if self.failing is None:
            self.failing = what
            log.error("%s: %s; the publishes it held are nacked (further failures are "
                      "counted, not logged, until %d commits in a row succeed)", what, exc,
                      RECOVERED_AFTER)
        # Every channel with a publish waiting for the store is a waiter by then (it registers
        # when it flushes confirms, at the end of the read that held the publish; the store
        # writes later in the turn).
        for waiter in list(self.waiters):
            waiter.nack_generations(lo, hi)

    def _writes_succeed(self, gen: int) -> None:
        """A generation after the last failure made it to disk."""
        if self.failing is None or gen <= self.failed_gen:
            return
        self.good_run += 1
        if self.good_run >= RECOVERED_AFTER:
            log.warning("the message store is writable again (%d failed write(s) or fsync(s) "
                        "since: %s; their publishes were nacked)", self.failures, self.failing)
            self.failing = None
            self.failures = 0
