# Interface of fastvec's compiled kernels (see _kernels.pyx).
from libc.stdint cimport uint32_t, int64_t

cdef int wait_word(uint32_t *seq, uint32_t *waiting, uint32_t target,
                   int64_t spin_deadline, int64_t deadline, bint yield_spin=*) noexcept nogil
cdef void publish_word(uint32_t *seq, uint32_t *waiting, uint32_t value) noexcept nogil
