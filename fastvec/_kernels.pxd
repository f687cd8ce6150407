# Interface of fastvec's compiled kernels (see _kernels.pyx).
from libc.stdint cimport uint32_t, int64_t

# Word offsets inside a worker's control block: mirrors fastvec.protocol.Control
# (tests/test_protocol.py checks that both agree).
cdef enum:
    CMD_SEQ = 0
    CMD_WAITING = 1
    CMD = 2
    SLOT = 3
    ARG = 4
    DONE_SEQ = 16
    DONE_WAITING = 17
    HAS_MESSAGE = 18
    REMAINING = 0
    REMAINING_WAITING = 1

cdef int wait_word(uint32_t *seq, uint32_t *waiting, uint32_t target,
                   int64_t spin_deadline, int64_t deadline, bint yield_spin, bint differ) noexcept nogil
cdef void publish_word(uint32_t *seq, uint32_t *waiting, uint32_t value) noexcept nogil
