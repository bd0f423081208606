/*
 * blas_room.c — refuse, rather than hang, when OpenBLAS cannot get its work
 * buffer.
 *
 * DESIGN
 *   OpenBLAS gives every thread that calls it a work buffer of about
 *   128 MiB, reserved on the thread's first call, and when the reservation
 *   fails (an address-space limit, `ulimit -v`) it retries forever: the
 *   process spins and ignores SIGTERM's flag. Before a thread's first BLAS
 *   or LAPACK call, alloy_blas_room() reserves and releases that much
 *   address space (PROT_NONE, MAP_NORESERVE: no memory is touched) and
 *   returns an error naming the limit when it cannot. The check runs only
 *   when OpenBLAS is linked and RLIMIT_AS is finite, and once per thread
 *   that passed (its buffer then stays in OpenBLAS's pool).
 */
#include "linalg/svd.h"

#include <sys/mman.h>
#include <sys/resource.h>

#define BLAS_BUFFER_PROBE ((size_t)136 << 20) /* OpenBLAS's per-thread buffer (128 MiB) and its headers */

int alloy_blas_room(struct alloy_err *err)
{
#ifdef ALLOY_HAVE_OPENBLAS
    static _Thread_local int ok;
    struct rlimit rl;
    if (ok || getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY) return ALLOY_OK;
    void *p = mmap(NULL, BLAS_BUFFER_PROBE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return alloy_err_set(err, ALLOY_ERR_NOMEM, "not enough address space for OpenBLAS's work buffer (%zu MiB "
                             "per thread) under the address-space limit of %llu MiB (ulimit -v)",
                             BLAS_BUFFER_PROBE >> 20, (unsigned long long)(rl.rlim_cur >> 20));
    munmap(p, BLAS_BUFFER_PROBE);
    ok = 1;
#else
    (void)err;
#endif
    return ALLOY_OK;
}
