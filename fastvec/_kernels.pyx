# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""Compiled hot-path kernels of fastvec.

Synchronisation: every worker has a command sequence word (written by the
parent) and a done sequence word (written by the worker), each with a
"waiting" word beside it. A waiter spins for a bounded time, then announces
itself in the waiting word and sleeps in a futex on the sequence word (a
shared, non-private futex, so it works across processes on a shared mapping).
A publisher stores the new sequence value (sequentially consistent) and issues
a futex wake only when the waiting word says someone sleeps; with both sides
using seq_cst accesses, either the waiter sees the new value or the publisher
sees the waiter, so no wake-up is lost. Sleeps time out so the caller can check
that its peer is still alive.

Data: gather/scatter between per-env Python objects and the contiguous
per-env rows of a ring slot.

The pure-Python twin is fastvec/_kernels_py.py; both must behave the same.
"""

from libc.stdint cimport uint32_t, int64_t, uint8_t
from libc.string cimport memcpy, memmove
from cpython.sequence cimport PySequence_GetItem
cimport numpy as cnp
import os
import signal

import numpy as np

cnp.import_array()

cdef extern from *:
    """
    #include <stdint.h>
    #include <time.h>
    #include <errno.h>
    #include <limits.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #include <linux/futex.h>
    #include <sched.h>
    #include <sys/resource.h>

    static inline void fv_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield" ::: "memory");
    #endif
    }
    static inline uint32_t fv_load(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
    static inline void fv_store(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_SEQ_CST); }
    static inline int64_t fv_now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    }
    /* 0 when woken or the value already differs, -1 with errno on timeout/interrupt. */
    static inline int fv_futex_wait(uint32_t *p, uint32_t expected, int64_t timeout_ns) {
        struct timespec ts;
        ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
        ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
        return (int)syscall(SYS_futex, p, FUTEX_WAIT, expected, &ts, NULL, 0);
    }
    static inline int fv_futex_wake(uint32_t *p) {
        return (int)syscall(SYS_futex, p, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
    }
    static inline int fv_errno(void) { return errno; }
    /* This thread's involuntary context switches (a yield that ran another task counts one), -1 if unknown. */
    static inline long fv_involuntary_switches(void) {
    #ifdef RUSAGE_THREAD
        struct rusage ru;
        if (getrusage(RUSAGE_THREAD, &ru) == 0) return ru.ru_nivcsw;
    #endif
        return -1;
    }
    static inline uint32_t fv_sub_fetch(uint32_t *p, uint32_t v) { return __atomic_sub_fetch(p, v, __ATOMIC_SEQ_CST); }

    #include <signal.h>
    /* SIGTERM with a deadline: the handler the interpreter installed runs on, and alarm() is armed
       as the signal arrives, in C, so a process stuck in native code (where the interpreter's
       handler never gets to run) still ends, of SIGALRM's default action. */
    static struct sigaction fv_term_next;
    static volatile unsigned int fv_term_seconds = 0;
    static void fv_on_term(int sig, siginfo_t *info, void *context) {
        int saved = errno;
        alarm(fv_term_seconds);
        errno = saved;
        if (fv_term_next.sa_flags & SA_SIGINFO) {
            fv_term_next.sa_sigaction(sig, info, context);
        } else if (fv_term_next.sa_handler != SIG_DFL && fv_term_next.sa_handler != SIG_IGN) {
            fv_term_next.sa_handler(sig);
        }
    }
    static int fv_term_deadline(unsigned int seconds) {
        struct sigaction current, ours;
        if (sigaction(SIGTERM, NULL, &current) != 0) return -1;
        fv_term_seconds = seconds;
        if ((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == fv_on_term) return 0;  /* armed already */
        if (!(current.sa_flags & SA_SIGINFO) && (current.sa_handler == SIG_DFL || current.sa_handler == SIG_IGN))
            return -2;  /* nothing to run before: wrapping would turn "die" or "ignore" into a delayed death */
        fv_term_next = current;
        ours = current;
        ours.sa_flags |= SA_SIGINFO;
        ours.sa_sigaction = fv_on_term;
        return sigaction(SIGTERM, &ours, NULL);
    }

    #include <pthread.h>
    #include <poll.h>
    /* A thread of its own (no interpreter, so it runs even while the main thread holds the GIL in
       stuck native code) that sleeps in poll() on a pidfd of the parent and, when the parent ends,
       sends SIGTERM to the main thread (whose blocking call it interrupts). */
    static int fv_watch_fd = -1;
    static pid_t fv_watch_owner = 0;  /* the process whose thread watches (a fork has no such thread) */
    static pthread_t fv_watch_target;
    static void *fv_watch_loop(void *unused) {
        struct pollfd p;
        p.fd = fv_watch_fd;
        p.events = POLLIN;
        for (;;) {
            int rc = poll(&p, 1, -1);
            if (rc > 0) break;
            if (rc < 0 && errno != EINTR) return NULL;
        }
        pthread_kill(fv_watch_target, SIGTERM);
        return NULL;
    }
    /* 0: watching; 1: the parent is gone already; -1: cannot watch (errno). */
    static int fv_watch_parent(int pid) {
    #ifdef SYS_pidfd_open
        pthread_t thread;
        pthread_attr_t attr;
        sigset_t all, previous;
        int fd, rc;
        if (fv_watch_fd >= 0) {
            if (fv_watch_owner == getpid()) return 0;  /* watching already */
            close(fv_watch_fd);  /* inherited through fork (a pool inside a worker): watch anew */
            fv_watch_fd = -1;
        }
        fd = (int)syscall(SYS_pidfd_open, pid, 0);
        if (fd < 0) return errno == ESRCH ? 1 : -1;
        fv_watch_fd = fd;
        fv_watch_owner = getpid();
        fv_watch_target = pthread_self();
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 65536);
        sigfillset(&all);  /* the thread blocks every signal: they go to the main thread */
        pthread_sigmask(SIG_SETMASK, &all, &previous);
        rc = pthread_create(&thread, &attr, fv_watch_loop, NULL);
        pthread_sigmask(SIG_SETMASK, &previous, NULL);
        pthread_attr_destroy(&attr);
        if (rc != 0) {
            close(fd);
            fv_watch_fd = -1;
            errno = rc;
            return -1;
        }
        return 0;
    #else
        errno = ENOSYS;
        return -1;
    #endif
    }
    """
    void fv_cpu_relax() nogil
    uint32_t fv_load(uint32_t *p) nogil
    void fv_store(uint32_t *p, uint32_t v) nogil
    int64_t fv_now_ns() nogil
    int fv_futex_wait(uint32_t *p, uint32_t expected, int64_t timeout_ns) nogil
    int fv_futex_wake(uint32_t *p) nogil
    int fv_errno() nogil
    long fv_involuntary_switches() nogil
    int sched_yield() nogil
    uint32_t fv_sub_fetch(uint32_t *p, uint32_t v) nogil
    int fv_term_deadline(unsigned int seconds)
    int fv_watch_parent(int pid)
    int EINTR

IMPLEMENTATION = "cython"

# A sched_yield that returns later than CONTENDED_YIELD_NS and ran another task meanwhile (this
# thread's involuntary context switches went up) gave the core to another process: the waiter
# sleeps instead. Two such yields within CONTENDED_WINDOW_NS (another process keeps wanting this
# core: a CPU hog, another program), and it does not yield at all for a while (each yield would
# cost a whole time slice): 50 ms, doubling up to 1 s while contention comes back as soon as the
# pause ends. A slow yield that switched to no other task is the hypervisor taking the vCPU a
# moment (on a shared cloud VM, idle: about 16 a second, 3 in 160 with a switch): the waiter
# goes on polling. Counting those as contention turned yield-polling off every second or so on
# such a host, and each such pause cost every command two futex sleeps.
DEF CONTENDED_YIELD_NS = 50000
DEF CONTENDED_WINDOW_NS = 20000000
DEF CONTENDED_BACKOFF_NS = 50000000
DEF CONTENDED_BACKOFF_MAX_NS = 1000000000
cdef int64_t contended_until = 0  # this process's: yield-polling is off until then
cdef int64_t contended_backoff = CONTENDED_BACKOFF_NS
cdef int64_t last_slow_yield = 0
cdef int64_t contended_count = 0  # how often the backoff started


def contended_yields():
    """How many times, in this process, yield-polling was turned off for a while (contention)."""
    return contended_count

def term_deadline(unsigned int seconds):
    """After ``signal.signal(SIGTERM, handler)``: also arm ``alarm(seconds)`` the moment SIGTERM
    arrives, in C, before the interpreter runs ``handler``. A process stuck in native code, where
    ``handler`` never runs, then still ends, of SIGALRM (whose action must be the default). Returns
    True; the pure-Python twin cannot act inside the signal and returns False."""
    cdef int rc = fv_term_deadline(seconds)
    if rc == -2:
        raise ValueError("term_deadline needs a Python handler for SIGTERM (signal.signal) installed first")
    if rc != 0:
        raise OSError("sigaction(SIGTERM) failed")
    return True


def watch_parent(int pid):
    """Send SIGTERM to this (main) thread when process ``pid`` ends, from a native thread that sleeps
    on a pidfd of it, so it acts even while the main thread holds the GIL in stuck native code. With
    ``term_deadline`` armed such a process still ends. At once if ``pid`` is gone already. Returns
    whether it watches (False where pidfds are missing: Linux before 5.3)."""
    cdef int rc = fv_watch_parent(pid)
    if rc == 1:
        os.kill(os.getpid(), signal.SIGTERM)
    return rc >= 0


# the control-word offsets this module was compiled with (_kernels.pxd), for tests/test_protocol.py
CONTROL_OFFSETS = {
    "CMD_SEQ": CMD_SEQ, "CMD_WAITING": CMD_WAITING, "CMD": CMD, "SLOT": SLOT, "ARG": ARG,
    "DONE_SEQ": DONE_SEQ, "DONE_WAITING": DONE_WAITING, "HAS_MESSAGE": HAS_MESSAGE,
    "REMAINING": REMAINING, "REMAINING_WAITING": REMAINING_WAITING,
}

# wait results
DONE = 1
TIMEOUT = 0
INTERRUPTED = -1


cdef char *data_of(object a, int type_num, Py_ssize_t *size, str what) except NULL:
    """The data of ``a``, a writable, C-contiguous numpy array of ``type_num`` in native byte order
    (``*size``: its number of items): the checks a typed memoryview argument makes, without
    acquiring a buffer, which costs about 0.1 us per argument (and the hot kernels take several
    per command)."""
    cdef cnp.ndarray arr
    if not cnp.PyArray_Check(a):
        raise TypeError(f"{what} must be a numpy array, got {type(a).__name__}")
    arr = <cnp.ndarray> a
    if not cnp.PyArray_EquivTypenums(cnp.PyArray_TYPE(arr), type_num) or not cnp.PyArray_ISNOTSWAPPED(arr):
        raise ValueError(f"{what} has dtype {arr.dtype}, expected {cnp.PyArray_DescrFromType(type_num)}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{what} must be C-contiguous")
    if not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what} is read-only")
    if cnp.PyArray_SIZE(arr) == 0:
        raise ValueError(f"{what} is empty")
    if size != NULL:
        size[0] = cnp.PyArray_SIZE(arr)
    return <char *> cnp.PyArray_DATA(arr)


cdef inline int check_words(Py_ssize_t index, Py_ssize_t span, Py_ssize_t n_words, str what) except -1:
    """``words[index .. index + span)`` inside the ``n_words`` words: an index outside them read, or wrote, memory
    that is not the pool's words (the indices come from the pool's layout; this keeps a caller's error an error)."""
    if index < 0 or index > n_words - span:
        raise IndexError(f"{what} {index} outside {n_words} words")
    return 0


cdef int check_done_words(Py_ssize_t *done_index, Py_ssize_t n, Py_ssize_t remaining_index, Py_ssize_t n_words) except -1:
    """check_words for each worker's DONE word (and its waiting word), and for the countdown's two words."""
    cdef Py_ssize_t k
    check_words(remaining_index, REMAINING_WAITING + 1, n_words, "remaining word")
    for k in range(n):
        check_words(done_index[k], 2, n_words, "done word")
    return 0


cdef uint32_t *seqs_of(object seqs_array, Py_ssize_t workers) except NULL:
    """The data of ``seqs_array``, the command sequence of each of ``workers`` workers (see data_of)."""
    cdef Py_ssize_t m
    cdef uint32_t *seqs = <uint32_t *> data_of(seqs_array, cnp.NPY_UINT32, &m, "seqs")
    if m < workers:
        raise ValueError(f"seqs has {m} words for {workers} workers")
    return seqs


cdef int wait_word(uint32_t *seq, uint32_t *waiting, uint32_t target,
                   int64_t spin_deadline, int64_t deadline, bint yield_spin, bint differ) noexcept nogil:
    """Wait until *seq == target (with ``differ``: until *seq != target). 1: reached, 0: deadline
    passed, -1: a signal arrived.

    Until ``spin_deadline`` it polls: with a pause instruction (a core of its own is
    free, the publisher runs elsewhere) or, with ``yield_spin``, giving the core away
    with sched_yield (more processes than cores: the publisher may need this core,
    and a yielding waiter needs no wake-up). Then it sleeps on the futex. A yield that
    took long and ran another task means another process wanted this core (a CPU hog,
    another program): the scheduler would hand it whole time slices at every further
    yield, so the waiter sleeps at once instead and is woken by the publisher. A slow
    yield that ran no other task (the hypervisor took the vCPU) changes nothing.
    """
    global contended_until, contended_count, last_slow_yield, contended_backoff
    cdef uint32_t value
    cdef int64_t now, before, after
    cdef long switches = -2, switched  # this thread's involuntary switches before the first yield
    cdef int i = 0
    cdef int rc
    while True:
        if (fv_load(seq) == target) != differ:
            return 1
        i += 1
        if yield_spin:
            before = fv_now_ns()
            if before >= spin_deadline or before < contended_until:
                break
            if switches == -2:
                switches = fv_involuntary_switches()
            sched_yield()
            after = fv_now_ns()
            if after - before > CONTENDED_YIELD_NS:
                switched = fv_involuntary_switches()
                if switches >= 0 and switched == switches:
                    continue  # no other task ran: the hypervisor took the vCPU, nobody wants this core
                switches = switched
                if after - last_slow_yield < CONTENDED_WINDOW_NS:
                    if after < contended_until + contended_backoff:  # again, as soon as the pause ended
                        contended_backoff = min(2 * contended_backoff, CONTENDED_BACKOFF_MAX_NS)
                    else:
                        contended_backoff = CONTENDED_BACKOFF_NS
                    contended_until = after + contended_backoff
                    contended_count += 1
                last_slow_yield = after
                break
            continue
        if (i & 63) == 0:
            if fv_now_ns() >= spin_deadline:
                break
        fv_cpu_relax()
    while True:
        fv_store(waiting, 1)
        value = fv_load(seq)
        if (value == target) != differ:
            fv_store(waiting, 0)
            return 1
        now = fv_now_ns()
        if now >= deadline:
            fv_store(waiting, 0)
            return 0
        rc = fv_futex_wait(seq, value, deadline - now)
        if rc != 0 and fv_errno() == EINTR:
            fv_store(waiting, 0)
            if (fv_load(seq) == target) != differ:
                return 1
            return -1


cdef void publish_word(uint32_t *seq, uint32_t *waiting, uint32_t value) noexcept nogil:
    fv_store(seq, value)
    if fv_load(waiting) != 0:
        fv_futex_wake(seq)


cdef inline int64_t spin_end(int64_t start, int64_t spin_ns, int64_t timeout_ns) noexcept nogil:
    """When a wait that began at ``start`` stops polling: after ``|spin_ns|``, and never past the wait's own end
    (a poll longer than the timeout let a wait, and the step_timeout and liveness checks behind it, overrun)."""
    cdef int64_t spin = spin_ns if spin_ns >= 0 else -spin_ns
    return start + (spin if spin < timeout_ns else timeout_ns)


def wait_all(words, seq_index_array, uint32_t target, int64_t spin_ns, int64_t timeout_ns):
    """Wait until ``words[i] == target`` for every i in ``seq_index``.

    The waiting word of each sequence word is the next word (``i + 1``).
    Spins for at most ``spin_ns`` in total (a negative value: yields the core for
    at most ``-spin_ns``), then sleeps, for at most ``timeout_ns`` in all.
    Returns -1 when all are done, else the position in ``seq_index`` of the first
    word still pending (on timeout or when a signal arrived).
    """
    cdef Py_ssize_t n, n_words
    cdef Py_ssize_t k
    cdef int rc = 1
    cdef uint32_t *base = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    cdef Py_ssize_t *seq_index = <Py_ssize_t *> data_of(seq_index_array, cnp.NPY_INTP, &n, "seq_index")
    cdef int64_t start, spin_deadline, deadline
    for k in range(n):
        check_words(seq_index[k], 2, n_words, "sequence word")
    with nogil:
        start = fv_now_ns()
        spin_deadline = spin_end(start, spin_ns, timeout_ns)
        deadline = start + timeout_ns
        for k in range(n):
            rc = wait_word(base + seq_index[k], base + seq_index[k] + 1, target, spin_deadline, deadline, spin_ns < 0, False)
            if rc != 1:
                break
    if rc == 1:
        return -1
    return k


def publish(words, Py_ssize_t index, uint32_t value):
    """Store ``value`` in ``words[index]`` and wake a sleeper announced in ``words[index + 1]``."""
    cdef Py_ssize_t n_words
    cdef uint32_t *base = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    check_words(index, 2, n_words, "word")
    publish_word(base + index, base + index + 1, value)


def issue(words, bases_array, uint32_t command, uint32_t slot, uint32_t arg, seqs_array,
          Py_ssize_t remaining_index):
    """Give each worker (control block at ``bases[k]``) a command: write CMD, SLOT, ARG, arm the
    pool's countdown with the number of workers, count the command in ``seqs[k]`` (each worker
    counts its own: asynchronous batches give commands to some workers only; uint32, wrapping
    as the workers' words do), then publish CMD_SEQ = seqs[k]. Counting here, not in numpy,
    saves the parent about a microsecond per command."""
    cdef Py_ssize_t k, b, n, n_words
    cdef uint32_t *base = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    cdef Py_ssize_t *bases = <Py_ssize_t *> data_of(bases_array, cnp.NPY_INTP, &n, "bases")
    cdef uint32_t *seqs = seqs_of(seqs_array, n)
    check_words(remaining_index, REMAINING_WAITING + 1, n_words, "remaining word")
    for k in range(n):
        check_words(bases[k], DONE_WAITING + 1, n_words, "control block")
    fv_store(base + remaining_index, <uint32_t> n)
    for k in range(n):
        b = bases[k]
        base[b + CMD] = command
        base[b + SLOT] = slot
        base[b + ARG] = arg
        seqs[k] = seqs[k] + 1
        publish_word(base + b + CMD_SEQ, base + b + CMD_WAITING, seqs[k])


def finish(words, Py_ssize_t done_index, uint32_t seq, Py_ssize_t remaining_index):
    """A worker is done: publish its DONE_SEQ, then count down the pool's countdown word; the
    last worker wakes the parent, so a parent waiting on many workers wakes once, not once each."""
    cdef Py_ssize_t n_words
    cdef uint32_t *base = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    check_words(done_index, 2, n_words, "done word")
    check_words(remaining_index, REMAINING_WAITING + 1, n_words, "remaining word")
    publish_word(base + done_index, base + done_index + 1, seq)
    if fv_sub_fetch(base + remaining_index + REMAINING, 1) == 0:
        if fv_load(base + remaining_index + REMAINING_WAITING) != 0:
            fv_futex_wake(base + remaining_index + REMAINING)


def wait_remaining(words, Py_ssize_t remaining_index, done_index_array, seqs_array, int64_t spin_ns, int64_t timeout_ns):
    """Parent: wait until every worker k has finished its command ``seqs[k]``.

    The countdown is only a wake-up hint (one wake for the whole batch): a late decrement
    of an earlier command can bring it to 0 early, so completion is every DONE_SEQ word
    equal to ``seq``; after the countdown the words still pending are waited on one by one.
    Returns -1 when all are done, else the position in ``done_index`` of a worker still
    pending (the timeout passed, or a signal arrived).
    """
    cdef Py_ssize_t n, n_words
    cdef uint32_t *base = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    cdef Py_ssize_t *done_index = <Py_ssize_t *> data_of(done_index_array, cnp.NPY_INTP, &n, "done_index")
    cdef uint32_t *seqs = seqs_of(seqs_array, n)
    check_done_words(done_index, n, remaining_index, n_words)
    cdef int64_t start, spin_deadline, deadline
    cdef int rc = 1
    cdef Py_ssize_t k
    with nogil:
        start = fv_now_ns()
        spin_deadline = spin_end(start, spin_ns, timeout_ns)
        deadline = start + timeout_ns
        rc = wait_word(base + remaining_index + REMAINING, base + remaining_index + REMAINING_WAITING, 0,
                       spin_deadline, deadline, spin_ns < 0, False)
        if rc != -1:  # counted down (or timed out): every DONE word decides
            for k in range(n):
                rc = wait_word(base + done_index[k], base + done_index[k] + 1, seqs[k], spin_deadline, deadline,
                               spin_ns < 0, False)
                if rc != 1:
                    break
    if rc == 1:
        return -1
    for k in range(n):
        if fv_load(base + done_index[k]) != seqs[k]:
            return k
    return -1


def wait_any(words, Py_ssize_t remaining_index, done_index_array, seqs_array, int64_t spin_ns, int64_t timeout_ns):
    """Parent, asynchronous batches: wait until some worker k has finished its command ``seqs[k]``.

    The countdown word is armed to 1 before the DONE words are checked, so the first worker
    to finish afterwards brings it to 0 and wakes the parent; one that finished before is
    seen by the check. The parent waits for the word to leave 1, not to reach 0: two workers
    finishing together take it past 0. Returns the first k done, or -1 (the timeout passed,
    or a signal arrived).
    """
    cdef Py_ssize_t n, n_words
    cdef uint32_t *base = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    cdef Py_ssize_t *done_index = <Py_ssize_t *> data_of(done_index_array, cnp.NPY_INTP, &n, "done_index")
    cdef uint32_t *seqs = seqs_of(seqs_array, n)
    check_done_words(done_index, n, remaining_index, n_words)
    cdef int64_t start, spin_deadline, deadline
    cdef int rc = 1
    cdef Py_ssize_t k
    cdef Py_ssize_t found = -1
    with nogil:
        start = fv_now_ns()
        spin_deadline = spin_end(start, spin_ns, timeout_ns)
        deadline = start + timeout_ns
        while True:
            fv_store(base + remaining_index + REMAINING, 1)
            for k in range(n):
                if fv_load(base + done_index[k]) == seqs[k]:
                    found = k
                    break
            if found >= 0 or rc != 1:
                break
            rc = wait_word(base + remaining_index + REMAINING, base + remaining_index + REMAINING_WAITING, 1,
                           spin_deadline, deadline, spin_ns < 0, True)
    return found


cdef extern from "numpy/arrayobject.h":
    bint PyDataType_REFCHK(cnp.PyArray_Descr *)  # items hold Python references (object, or fields of it)


cdef struct Rows:
    # the rows of a C-contiguous destination [rows, *row_shape], as the row kernels copy into them
    char *base
    int ndim  # of one row
    cnp.npy_intp *dims  # of one row
    Py_ssize_t nbytes  # of one row
    int type_num
    bint fast  # native byte order, items of plain bytes: items of its dtype may be memcpy'd
    bint references  # items hold Python references: rows are assigned by numpy, which counts them


cdef inline bint same_dtype(cnp.ndarray a, cnp.ndarray b):
    """``a.dtype == b.dtype``, as numpy compares them: type, item size, unit, fields and byte order (type
    numbers alone take S2 for S8 and datetime64[ms] for [s], and np.longlong for another type than int64)."""
    if cnp.PyArray_DESCR(a) == cnp.PyArray_DESCR(b):  # (the usual case: one dtype object)
        return True
    return cnp.PyArray_EquivTypes(<cnp.dtype> cnp.PyArray_DESCR(a), <cnp.dtype> cnp.PyArray_DESCR(b))


cdef int rows_of(cnp.ndarray dst, Rows *rows, str kernel, bint writing=True) except -1:
    """Fill ``rows`` for ``dst``; a destination that is not C-contiguous, has no rows or (``writing``) is
    read-only raises, naming ``kernel``."""
    cdef int d
    if not cnp.PyArray_IS_C_CONTIGUOUS(dst):
        raise ValueError(f"{kernel} needs a C-contiguous destination")
    if cnp.PyArray_NDIM(dst) == 0:
        raise ValueError(f"{kernel} needs a destination with rows, got a 0-d array")
    if writing and not cnp.PyArray_ISWRITEABLE(dst):
        raise ValueError(f"{kernel}: assignment destination is read-only")
    rows.base = <char *> cnp.PyArray_DATA(dst)
    rows.ndim = cnp.PyArray_NDIM(dst) - 1
    rows.dims = cnp.PyArray_DIMS(dst) + 1
    rows.nbytes = cnp.PyArray_ITEMSIZE(dst)
    for d in range(rows.ndim):
        rows.nbytes *= rows.dims[d]
    rows.type_num = cnp.PyArray_TYPE(dst)
    rows.references = PyDataType_REFCHK(cnp.PyArray_DESCR(dst))
    # memcpy only between arrays of one dtype in native byte order (a swapped item, or destination, is
    # converted), and never of references: those numpy assigns, counting them
    rows.fast = cnp.PyArray_ISNOTSWAPPED(dst) and not rows.references
    return 0


cdef inline int copy_row(object item, cnp.ndarray dst, const Rows *rows, Py_ssize_t index,
                         bint *converted) except -1:
    """Copy one observation into row ``index`` of ``dst`` (described by ``rows``): a memcpy when it
    already is a C-contiguous array of the destination's type in native byte order (``rows.fast``:
    the destination is native too), else
    after converting it (``*converted`` set when it was an array of another dtype, byte order included). 1: its shape is
    not a row's (nothing copied)."""
    cdef cnp.ndarray arr
    cdef int d
    if (rows.fast and cnp.PyArray_CheckExact(item) and same_dtype(<cnp.ndarray> item, dst)
            and cnp.PyArray_IS_C_CONTIGUOUS(<cnp.ndarray> item)):
        arr = <cnp.ndarray> item
    else:
        if cnp.PyArray_Check(item):
            if not same_dtype(<cnp.ndarray> item, dst):
                converted[0] = True  # another dtype, or the same in the other byte order
        elif isinstance(item, np.generic) and item.dtype != dst.dtype:
            converted[0] = True  # a numpy scalar of another dtype (np.float64(2.5) into an int64 space's rows)
        arr = np.asarray(item, dtype=dst.dtype, order="C")
    if cnp.PyArray_NDIM(arr) != rows.ndim:
        return 1
    for d in range(rows.ndim):
        if cnp.PyArray_DIMS(arr)[d] != rows.dims[d]:
            return 1
    if rows.references:
        dst[index] = arr
    else:
        # (memmove: an env may return a view of the row it is written into, whose bytes overlap it)
        memmove(rows.base + index * rows.nbytes, cnp.PyArray_DATA(arr), rows.nbytes)
    return 0


def gather_rows(list items, cnp.ndarray dst, Py_ssize_t start, bint report_cast=False):
    """Copy ``items[j]`` into row ``dst[start + j]`` for every j.

    ``dst`` is C-contiguous with shape ``[rows, *row_shape]``. Items that are
    C-contiguous arrays of the right dtype and shape are copied with memcpy;
    anything else goes through ``np.asarray(item, dtype=dst.dtype)`` first
    (casting, like SB3's DummyVecEnv). Returns -1 on success, or the index j of
    the first item whose shape does not match (nothing after it is copied); a value that
    cannot be converted (300 into uint8, a string into float) raises as numpy raises. With
    ``report_cast``, a successful copy in which some item was an array (or a numpy scalar) of
    another dtype returns ``-2 - j`` for the first such j.
    """
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t j
    cdef Rows rows
    cdef bint converted
    cdef Py_ssize_t cast = -1
    rows_of(dst, &rows, "gather_rows")
    if start < 0 or start + n > cnp.PyArray_DIMS(dst)[0]:
        raise IndexError(f"rows {start}..{start + n} outside destination with {cnp.PyArray_DIMS(dst)[0]} rows")
    for j in range(n):
        converted = False
        if copy_row(items[j], dst, &rows, start + j, &converted):
            return j
        if converted and report_cast and cast < 0:
            cast = j
    return -1 if cast < 0 else -2 - cast


def write_results(list results, cnp.ndarray obs_dst, rewards_array, terminated_array, truncated_array,
                  Py_ssize_t start, bint report_cast=False):
    """Write a shard's step results (env.step's 5-tuples) into one ring slot, in one call.

    Row ``start + j`` of ``obs_dst`` / ``rewards`` / ``terminated`` / ``truncated`` gets
    ``results[j]``'s observation (copied as gather_rows copies), float reward and bool flags.
    Returns ``(code, ended, has_info, nan, shared)``: ``code`` as gather_rows returns it (-1, a bad
    shape's j, or ``-2 - j`` for a cast); ``ended``: the list of the j that terminated or
    truncated (in order; empty on most steps; after a bad shape, those before it);
    ``has_info``: some info is not None nor an empty plain dict (see shard._said); ``nan``: the first j with a NaN reward, or -1;
    ``shared``: the first j whose observation is over the same memory as the one before it or the
    first one (the same list, or arrays starting at the same byte), or -1 (envs of one process
    returning a buffer their class shares: each row was read after every env stepped).
    A malformed result or a value that does not convert raises (the caller then finds whose).
    """
    cdef Py_ssize_t n = len(results)
    cdef Py_ssize_t j
    cdef Rows rows
    cdef object result
    cdef bint converted
    cdef Py_ssize_t cast = -1, nan = -1, shared = -1
    cdef list ended = []
    cdef bint has_info = False, term, trunc
    cdef object info
    cdef object item, prev_item = None, first_item = None
    cdef void *data
    cdef void *prev_data = NULL
    cdef void *first_data = NULL
    cdef double reward
    cdef Py_ssize_t n_rewards, n_terminated, n_truncated
    cdef double *rewards = <double *> data_of(rewards_array, cnp.NPY_DOUBLE, &n_rewards, "rewards")
    cdef uint8_t *terminated = <uint8_t *> data_of(terminated_array, cnp.NPY_UINT8, &n_terminated, "terminated")
    cdef uint8_t *truncated = <uint8_t *> data_of(truncated_array, cnp.NPY_UINT8, &n_truncated, "truncated")
    rows_of(obs_dst, &rows, "write_results")
    if (start < 0 or start + n > cnp.PyArray_DIMS(obs_dst)[0] or start + n > n_rewards or start + n > n_terminated
            or start + n > n_truncated):
        raise IndexError("write_results: rows outside the slot")
    for j in range(n):
        result = results[j]
        if type(result) is not tuple or len(<tuple> result) != 5:
            raise TypeError("env.step() must return a 5-tuple")
        converted = False
        item = (<tuple> result)[0]
        if shared < 0:  # (a pointer or two compared per env; what returns a fresh array or a number never matches)
            if cnp.PyArray_Check(item):
                data = cnp.PyArray_DATA(<cnp.ndarray> item) if cnp.PyArray_NBYTES(<cnp.ndarray> item) else NULL
                if data != NULL and (data == prev_data or data == first_data):
                    shared = j
                prev_data, prev_item = data, None
            elif type(item) is list:
                if item is prev_item or item is first_item:
                    shared = j
                prev_data, prev_item = NULL, item
            else:
                prev_data, prev_item = NULL, None
            if j == 0:
                first_data, first_item = prev_data, prev_item
        if copy_row(item, obs_dst, &rows, start + j, &converted):
            return j, ended, has_info, nan, shared
        if converted and report_cast and cast < 0:
            cast = j
        reward = (<tuple> result)[1]
        rewards[start + j] = reward
        if reward != reward and nan < 0:
            nan = j
        term = (<tuple> result)[2]
        trunc = (<tuple> result)[3]
        terminated[start + j] = term
        truncated[start + j] = trunc
        if term or trunc:
            ended.append(j)
        info = (<tuple> result)[4]
        if not has_info and info is not None and not (type(info) is dict and not <dict> info):
            has_info = True  # (anything but None and an empty plain dict says something: a falsy mapping too)
    return (-1 if cast < 0 else -2 - cast), ended, has_info, nan, shared


def add_stats(row_array, double commands, double env_steps, double busy_ns, double restarts, double wait_ns=0.0):
    """A shard's counters (columns of fastvec.protocol.Stats) grow by one command's amounts; its
    duration is counted in the histogram (bin b: [2^b, 2^(b+1)) microseconds, bin 0 below 2 us)."""
    cdef int b = 0
    cdef double us = busy_ns / 1000.0
    cdef Py_ssize_t n
    cdef double *row = <double *> data_of(row_array, cnp.NPY_DOUBLE, &n, "row")
    if n < 6:
        raise ValueError(f"a stats row has at least 6 columns, got {n}")
    row[0] += commands
    row[1] += env_steps
    row[2] += busy_ns
    row[3] += restarts
    row[4] += wait_ns
    while us >= 2.0 and b < n - 6:
        us *= 0.5
        b += 1
    row[5 + b] += 1


def first_nan(const double[::1] values not None, Py_ssize_t start, Py_ssize_t stop):
    """First index i in [start, stop) with values[i] NaN, or -1."""
    cdef Py_ssize_t i
    if start < 0 or stop > values.shape[0] or stop < start:
        raise IndexError(f"first_nan: [{start}, {stop}) outside {values.shape[0]} values")
    for i in range(start, stop):
        if values[i] != values[i]:
            return i
    return -1


def store_floats(list items, double[::1] dst not None, Py_ssize_t start):
    """``dst[start + j] = float(items[j])`` for every j."""
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t j
    cdef double value
    if start < 0 or start + n > dst.shape[0]:
        raise IndexError("store_floats destination too small")
    for j in range(n):
        value = items[j]
        dst[start + j] = value


def store_bools(list items, uint8_t[::1] dst not None, Py_ssize_t start):
    """``dst[start + j] = bool(items[j])`` for every j."""
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t j
    if start < 0 or start + n > dst.shape[0]:
        raise IndexError("store_bools destination too small")
    for j in range(n):
        dst[start + j] = 1 if items[j] else 0


cdef int check_bounds_shape(Py_ssize_t n, Py_ssize_t k, Py_ssize_t k_high) except -1:
    """The range checks' shapes: ``n`` values, rows of ``k`` bounds (low and high alike)."""
    if k_high != k or (n % k if k else n):  # (no bounds fit no values: a Box of shape (0,))
        raise ValueError(f"bounds of {k} low and {k_high} high values for {n} values")
    return 0


def first_outside_int(const int64_t[::1] values not None, const int64_t[::1] low not None,
                      const int64_t[::1] high not None):
    """First flat index i with values[i] outside [low[i % k], high[i % k]], or -1."""
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t k = low.shape[0]
    cdef Py_ssize_t i, m = 0
    cdef int64_t v
    check_bounds_shape(n, k, high.shape[0])
    for i in range(n):
        v = values[i]
        if v < low[m] or v > high[m]:
            return i
        m += 1
        if m == k:
            m = 0
    return -1


ctypedef fused real:
    float
    double


def first_outside_float(const real[::1] values not None, const double[::1] low not None,
                        const double[::1] high not None):
    """First flat index i with values[i] NaN or outside [low[i % k], high[i % k]], or -1."""
    cdef Py_ssize_t n = values.shape[0]
    cdef Py_ssize_t k = low.shape[0]
    cdef Py_ssize_t i, m = 0
    cdef double v
    check_bounds_shape(n, k, high.shape[0])
    for i in range(n):
        v = values[i]
        if not (v >= low[m] and v <= high[m]):
            return i
        m += 1
        if m == k:
            m = 0
    return -1


def done_flags(terminated_array, truncated_array, rewards_array):
    """One step's results for SB3's API from a ring slot, in one call: ``(dones, rewards, ended)``,
    a new bool array ``terminated | truncated``, a new float64 copy of the rewards, and the list of
    env indices whose episode ended (empty on most steps)."""
    cdef Py_ssize_t n, n_truncated, n_rewards, i
    cdef uint8_t *terminated = <uint8_t *> data_of(terminated_array, cnp.NPY_BOOL, &n, "terminated")
    cdef uint8_t *truncated = <uint8_t *> data_of(truncated_array, cnp.NPY_BOOL, &n_truncated, "truncated")
    cdef double *rewards = <double *> data_of(rewards_array, cnp.NPY_DOUBLE, &n_rewards, "rewards")
    if n_truncated != n or n_rewards != n:
        raise ValueError(f"done_flags: {n} terminated, {n_truncated} truncated and {n_rewards} rewards")
    cdef cnp.npy_intp dims[1]
    dims[0] = n
    cdef cnp.ndarray dones = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_BOOL)
    cdef cnp.ndarray copied = cnp.PyArray_SimpleNew(1, dims, cnp.NPY_DOUBLE)
    cdef uint8_t *d = <uint8_t *> cnp.PyArray_DATA(dones)
    cdef list ended = []
    memcpy(cnp.PyArray_DATA(copied), rewards, n * sizeof(double))
    for i in range(n):
        d[i] = (terminated[i] | truncated[i]) != 0
        if d[i]:
            ended.append(i)
    return dones, copied, ended


def info_dicts(Py_ssize_t n, key, value):
    """``n`` new dicts ``{key: value}`` (SB3's usual infos: one per env, each its own)."""
    cdef Py_ssize_t i
    cdef list out = []
    for i in range(n):
        out.append({key: value})
    return out


def step_into(list results, list step_fns, actions, Py_ssize_t first=0, double[::1] env_ns=None,
              Py_ssize_t offset=0, double scale=1.0):
    """``results.append(step_fns[j](actions[j]))`` for every j from ``first`` on: a shard's envs stepped
    in one call. An env's exception propagates; ``len(results)`` then says which env raised (the
    envs before it have their results in ``results``). With ``env_ns`` (the monitor's per-env
    timing): each env's step, in ns times ``scale``, is added to ``env_ns[offset + j]``, from two
    reads of the monotonic clock an env."""
    cdef Py_ssize_t j
    cdef int64_t began
    if first < 0:
        raise IndexError(f"step_into: first env {first} < 0")
    if env_ns is None:
        for j in range(first, len(step_fns)):
            # (the sequence protocol: for a numpy array the same item as actions[j], without the
            # general index parsing, about 200 instructions an env)
            results.append(step_fns[j](PySequence_GetItem(actions, j)))
        return
    if offset < 0 or offset + len(step_fns) > env_ns.shape[0]:
        raise IndexError(f"envs {offset}..{offset + len(step_fns) - 1} outside a timing array of {env_ns.shape[0]}")
    for j in range(first, len(step_fns)):
        began = fv_now_ns()
        results.append(step_fns[j](PySequence_GetItem(actions, j)))
        env_ns[offset + j] += <double>(fv_now_ns() - began) * scale


cdef inline bint watched_done(uint32_t *base, Py_ssize_t *done_index, uint32_t *seqs, Py_ssize_t *watch,
                              Py_ssize_t n) noexcept nogil:
    """Whether a watched worker (k in ``watch``) is done: its DONE word reached its command count."""
    cdef Py_ssize_t i, k
    for i in range(n):
        k = watch[i]
        if fv_load(base + done_index[k]) == seqs[k]:
            return True
    return False


cdef Py_ssize_t checked_watch(words, done_index_array, seqs_array, watch_array,
                              uint32_t **base, Py_ssize_t **done_index, uint32_t **seqs, Py_ssize_t **watch) except -1:
    """step_watching's and watch_stops' arrays, checked: the number of workers watched."""
    cdef Py_ssize_t n_words, n_done, n_watch, i
    base[0] = <uint32_t *> data_of(words, cnp.NPY_UINT32, &n_words, "words")
    done_index[0] = <Py_ssize_t *> data_of(done_index_array, cnp.NPY_INTP, &n_done, "done_index")
    seqs[0] = seqs_of(seqs_array, n_done)
    watch[0] = <Py_ssize_t *> data_of(watch_array, cnp.NPY_INTP, &n_watch, "watch")
    for i in range(n_watch):
        if watch[0][i] < 0 or watch[0][i] >= n_done:
            raise IndexError(f"watched worker {watch[0][i]} outside {n_done} workers")
        if done_index[0][watch[0][i]] < 0 or done_index[0][watch[0][i]] >= n_words:
            raise IndexError(f"done word {done_index[0][watch[0][i]]} outside {n_words} words")
    return n_watch


def watch_stops(words, done_index_array, seqs_array, watch_array, int64_t deadline):
    """Whether a step in parts stops now (see step_watching): a watched worker is done and the
    monotonic clock is still before ``deadline`` (ns)."""
    cdef uint32_t *base
    cdef Py_ssize_t *done_index
    cdef uint32_t *seqs
    cdef Py_ssize_t *watch
    cdef Py_ssize_t n = checked_watch(words, done_index_array, seqs_array, watch_array, &base, &done_index, &seqs, &watch)
    return watched_done(base, done_index, seqs, watch, n) and fv_now_ns() < deadline


def step_watching(list results, list step_fns, actions, Py_ssize_t stop, words, done_index_array, seqs_array,
                  watch_array, int64_t deadline):
    """step_into from env ``len(results)`` up to env ``stop``, stopping between two envs (at least
    one steps) once a watched worker is done (k in ``watch``: ``words[done_index[k]] == seqs[k]``)
    while the monotonic clock is before ``deadline`` (ns): the calling process's own group under
    asynchronous batches hands a finished worker its next batch. ``len(results)`` says how far it
    went. Checking in here, not in Python between envs, keeps the check to a load or two an env."""
    cdef uint32_t *base
    cdef Py_ssize_t *done_index
    cdef uint32_t *seqs
    cdef Py_ssize_t *watch
    cdef Py_ssize_t n = checked_watch(words, done_index_array, seqs_array, watch_array, &base, &done_index, &seqs, &watch)
    cdef Py_ssize_t j
    cdef bint watching = n > 0
    if stop > len(step_fns):
        stop = len(step_fns)
    for j in range(len(results), stop):
        results.append(step_fns[j](PySequence_GetItem(actions, j)))
        if watching and j + 1 < stop and watched_done(base, done_index, seqs, watch, n):
            if fv_now_ns() < deadline:
                return
            watching = False  # (past the deadline: it never stops again in this call)


def row_copies(cnp.ndarray src not None, list indices):
    """``[src[i].copy() for i in indices]``: each row a new array of its own (memcpy'd), for a
    C-contiguous ``src`` in native byte order (anything else is copied by numpy)."""
    cdef Py_ssize_t i, n_rows = cnp.PyArray_DIMS(src)[0] if cnp.PyArray_NDIM(src) > 0 else 0
    cdef Rows rows
    cdef cnp.ndarray row
    cdef list out = []
    if cnp.PyArray_NDIM(src) == 0:
        raise ValueError("row_copies needs an array with rows")
    for i in indices:
        if i < 0 or i >= n_rows:
            raise IndexError(f"row {i} outside an array of {n_rows} rows")
    # (new rows are made of the type number's dtype: another dtype of that number, S3 or datetime64[ms], would
    # lose its item size or unit, and items holding references are numpy's to copy)
    if (not cnp.PyArray_IS_C_CONTIGUOUS(src) or not cnp.PyArray_ISNOTSWAPPED(src)
            or PyDataType_REFCHK(cnp.PyArray_DESCR(src))
            or not cnp.PyArray_EquivTypes(cnp.PyArray_DescrFromType(cnp.PyArray_TYPE(src)),
                                          <cnp.dtype> cnp.PyArray_DESCR(src))):
        return [src[i].copy() for i in indices]
    if cnp.PyArray_NDIM(src) == 1:  # (rows of one item: numpy scalars, as src[i].copy() gives, not 0-d arrays)
        return [src[i] for i in indices]
    rows_of(src, &rows, "row_copies", False)
    for i in indices:
        row = cnp.PyArray_EMPTY(rows.ndim, rows.dims, rows.type_num, 0)
        memcpy(cnp.PyArray_DATA(row), rows.base + i * rows.nbytes, rows.nbytes)
        out.append(row)
    return out


def copy_same(cnp.ndarray out, actions):
    """``out[...] = actions`` in one memmove when ``actions`` is a plain numpy array (not a subclass)
    of ``out``'s shape and dtype, both C-contiguous and in native byte order: returns True. Anything
    else copies nothing and returns False (the caller then checks and casts)."""
    cdef cnp.ndarray a
    cdef int d
    if not cnp.PyArray_CheckExact(actions):
        return False
    a = <cnp.ndarray> actions
    if cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(out):
        return False
    for d in range(cnp.PyArray_NDIM(out)):
        if cnp.PyArray_DIMS(a)[d] != cnp.PyArray_DIMS(out)[d]:
            return False
    if (not same_dtype(a, out)
            or PyDataType_REFCHK(cnp.PyArray_DESCR(out))
            or not cnp.PyArray_ISNOTSWAPPED(a) or not cnp.PyArray_ISNOTSWAPPED(out)
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_IS_C_CONTIGUOUS(out)
            or not cnp.PyArray_ISWRITEABLE(out)):
        return False
    memmove(cnp.PyArray_DATA(out), cnp.PyArray_DATA(a), cnp.PyArray_NBYTES(out))
    return True
